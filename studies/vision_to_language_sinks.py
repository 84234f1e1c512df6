"""Do the vision tower's high-norm tokens become the language model's visual sinks, and in which dimensions?

For each prompt: the patches whose norm in the vision layer LLaVA reads its
features from exceeds the ratio x that image's median (FindVisionSinks), and the
image tokens the language model marks as visual sinks (FindSinks at tau), per
language layer. Overlap: the share of high-norm patches that are visual sinks,
against the share a random set of as many patches would have (the control:
its exact expectation, sinks / image tokens), with a 95% bootstrap CI of the
difference over prompts. Dimensions: the three largest |x_d| / RMS(x) of the
overlapping tokens, of the other visual sinks and of BOS, at the layer with the
most sinks ("To Sink or Not to Sink", ICLR 2026, reports that they differ from
BOS's). Layout: LLaVA-1.5's (one patch, one image token); other layouts are
refused. toy-llava's DINOv2-S has no high-norm token, and the output says so;
`--model tiny-llava --plant-vision-sinks` shows the study on a tower with them.
"""

from __future__ import annotations

import numpy as np
import torch

import sinklens as sl
from sinklens.errors import ParameterError
from sinklens.eval.figures import figure
from sinklens.eval.study import Study
from sinklens.eval.study_settings import parse_args
from sinklens.ops import dimension_magnitudes

NAME = "vision_to_language_sinks"


def options(parser) -> None:
    parser.add_argument("--ratio", type=float, default=None, help="high-norm: norm > ratio x the image's median (default 4)")
    parser.add_argument("--plant-vision-sinks", action="store_true",
                        help="tiny-llava only: plant high-norm tokens on bright patches (builtin.tiny_llava.plant_vision_sinks)")


def feature_layer(lm) -> tuple[int, int]:
    """(vision layer, first patch token) of the features LLaVA hands the projector; refuses other layouts."""
    config = lm.model.config
    if lm.catalogue.grid != "square" or config.vision_feature_select_strategy != "default":
        raise ParameterError(f"{lm.name} is not laid out as LLaVA-1.5 (one patch per image token); this study maps "
                             "patches to image tokens one to one: use toy-llava, tiny-llava or a LLaVA-1.5 checkpoint")  # fmt: skip
    chosen = config.vision_feature_layer
    if not isinstance(chosen, int) or chosen == 0:
        raise ParameterError(f"{lm.name} reads vision features {chosen!r}; this study follows one layer's")
    return (chosen - 1 if chosen > 0 else lm.n_vision_layers + chosen), 1  # hidden_states[h] is layer h - 1's output


def measure(study: Study, finder, vision_finder, layer: int, first: int) -> dict:
    """Per prompt: its high-norm patches, its visual sinks per layer, and its per-dimension profile at every layer."""
    lm, rows = study.loaded, []
    for batch, inputs in study.batches():
        profiles = {}
        keep = [sl.Edit(f"blocks.{l}.hook_resid_pre", lambda t, ctx, l=l: profiles.__setitem__(l, dimension_magnitudes(t)),
                        writes=False) for l in range(lm.n_layers)]  # fmt: skip
        ctx = study.runner.forward(inputs, [vision_finder, finder, *keep]).ctx
        for e in batch:
            image = e.own(ctx.image.mask)
            rows.append({
                "high": ctx.records["vision_sinks"][layer][e.row, first:].clone(),
                "sinks": torch.stack([e.own(ctx.sinks[l])[image] for l in range(lm.n_layers)]),
                "profile": torch.stack([e.own(profiles[l])[image] for l in range(lm.n_layers)]),
                "bos": torch.stack([e.own(profiles[l])[0] for l in range(lm.n_layers)]),
                "ratio": float(ctx.records["vision_norms"][layer][e.row].max() / ctx.records["vision_norms"][layer][e.row].median()),
            })  # fmt: skip
    return rows


def overlap(rows: list[dict], n_layers: int, seed: int) -> list[dict]:
    """Per language layer: observed share of high-norm patches that are sinks, the random control, the CI."""
    with_high = [r for r in rows if r["high"].any()]
    out = []
    for l in range(n_layers):
        observed = np.array([float((r["sinks"][l] & r["high"]).sum() / r["high"].sum()) for r in with_high])
        control = np.array([float(r["sinks"][l].float().mean()) for r in with_high])
        diff = observed - control
        rng = np.random.default_rng(seed)
        boots = diff[rng.integers(0, len(diff), size=(2000, len(diff)))].mean(1) if len(diff) else np.array([np.nan])
        out.append({"layer": l, "prompts": len(with_high), "observed": float(observed.mean()) if len(diff) else None,
                    "random_control": float(control.mean()) if len(diff) else None,
                    "difference_ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
                    if len(diff) else None})  # fmt: skip
    return out


def dimensions(rows: list[dict], layer: int) -> dict:
    """The three largest mean |x_d| / RMS(x) of the overlapping tokens, the other visual sinks and BOS at `layer`."""
    groups = {"high_norm_and_sink": [], "other_visual_sinks": [], "bos": [r["bos"][layer] for r in rows]}
    for r in rows:
        sinks = r["sinks"][layer]
        groups["high_norm_and_sink"] += list(r["profile"][layer][sinks & r["high"]])
        groups["other_visual_sinks"] += list(r["profile"][layer][sinks & ~r["high"]])
    top = {}
    for name, vectors in groups.items():
        if vectors:
            mean = torch.stack(vectors).mean(0)
            values, dims = mean.topk(3)
            top[name] = {"tokens": len(vectors), "dims": dims.tolist(), "magnitudes": [round(v, 2) for v in values.tolist()]}
        else:
            top[name] = {"tokens": 0, "dims": [], "magnitudes": []}
    return top


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__, n=40, smoke_n=4, argv=argv, extra=options)
    own = settings.own
    if own.plant_vision_sinks and settings.model.model != "tiny-llava":
        raise ParameterError("--plant-vision-sinks plants into tiny-llava's tower only; use --model tiny-llava")
    study = Study.start(settings)
    lm = study.loaded
    layer, first = feature_layer(lm)
    if own.plant_vision_sinks:
        from sinklens.builtin.tiny_llava import plant_vision_sinks

        plant_vision_sinks(lm.model)
    vision_finder = sl.FindVisionSinks(**({"ratio": own.ratio} if own.ratio is not None else {}))
    rows = measure(study, study.find_sinks(), vision_finder, layer, first)
    per_layer = overlap(rows, lm.n_layers, settings.seed)
    busiest = max(range(lm.n_layers), key=lambda l: sum(int(r["sinks"][l].sum()) for r in rows))
    prompts_with_high = sum(1 for r in rows if r["high"].any())
    finding = (f"{prompts_with_high} of {len(rows)} images have high-norm patches in vision layer {layer}"
               if prompts_with_high else f"no high-norm token in vision layer {layer} on any of {len(rows)} images "
               f"(largest norm / median: {max(r['ratio'] for r in rows):.2f}, threshold {vision_finder.ratio:g}): the "
               "overlap is undefined for this tower")  # fmt: skip
    print(finding)
    fig = draw(study, rows, per_layer, layer, vision_finder.ratio, finding)
    return study.finish(fig, {"vision_layer": layer, "ratio": vision_finder.ratio, "planted": own.plant_vision_sinks,
                              "finding": finding, "per_layer": per_layer, "busiest_layer": busiest,
                              "dimensions": dimensions(rows, busiest)})  # fmt: skip


def draw(study: Study, rows: list[dict], per_layer: list[dict], layer: int, ratio: float, finding: str):
    fig, (left, right) = figure(1, 2, figsize=(10, 3.6))
    left.hist([r["ratio"] for r in rows], bins=20, color="tab:gray")
    left.axvline(ratio, color="tab:red", linestyle="--", label=f"threshold {ratio:g}")
    left.set_xlabel(f"largest patch norm / median, vision layer {layer}")
    left.set_ylabel("images")
    left.legend(fontsize=8)
    layers = [row["layer"] for row in per_layer if row["observed"] is not None]
    if layers:
        right.plot(layers, [100 * per_layer[l]["observed"] for l in layers], "o-", ms=3, label="high-norm patches")
        right.plot(layers, [100 * per_layer[l]["random_control"] for l in layers], "s--", ms=3,
                   label="random patches (expected)")  # fmt: skip
        right.legend(fontsize=8)
    else:
        right.text(0.5, 0.5, "no high-norm patches:\noverlap undefined", ha="center", va="center", transform=right.transAxes)
    right.set_xlabel("language layer (hook_resid_pre)")
    right.set_ylabel("that are visual sinks (%)")
    fig.suptitle(study.title(f"vision high-norm patches vs visual sinks (tau {study.tau:g})", f"n = {len(rows)}")
                 + f"\n{finding}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
