"""Fig. 2: hidden-state profile |x_d| / RMS(x) of BOS, a visual sink and a visual non-sink token.

The three profiles come from one prompt at one layer; the JSON also says, over
`n` prompts, how often each kind of token has its largest dimension among the
sink dimensions, and which dimensions discovery finds from data on the same prompts.
"""

from __future__ import annotations

import torch

import sinklens as sl
from sinklens import ops
from sinklens.eval.figures import figure
from sinklens.eval.study import Study, map_layers
from sinklens.eval.study_settings import parse_args

NAME = "fig2_sink_dimensions"


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__.splitlines()[0], n=8, smoke_n=2, argv=argv)
    study = Study.start(settings)
    lm = study.loaded
    dims = tuple(lm.sink_dims)
    layer = map_layers(lm.n_layers)[0]
    finder = study.find_sinks(layers=[layer])
    counts = {"bos": 0, "visual_sink": 0, "visual_non_sink": 0}
    profiles, magnitudes, candidates = None, [], []
    n_with_sink = 0
    for batch, inputs in study.batches():
        ctx = study.runner.forward(inputs, [finder, sl.SinkDimensionScan()]).ctx
        scan = ctx.records["scan"]
        for e in batch:  # each example on its own positions (batches are padded on the left): position 0 is its BOS
            magnitudes.append(torch.stack([e.own(scan[l]) for l in range(lm.n_layers)]))  # [layer, pos, d]
            first = torch.zeros(e.length, dtype=torch.bool)
            first[0] = True
            candidates.append(first)
            profile = e.own(scan[layer])
            image = e.own(ctx.image.mask).cpu()
            phi = e.own(ctx.phi[layer]).cpu()
            sinks = e.own(ctx.sinks[layer]).cpu() & image
            n_with_sink += bool(sinks.any())
            # the image token with the largest phi (a visual sink when it reaches tau) and the one with the smallest
            tokens = {"bos": 0, "visual_sink": int(phi.masked_fill(~image, -1).argmax()),
                      "visual_non_sink": int(phi.masked_fill(~image, float("inf")).argmin())}  # fmt: skip
            for kind, position in tokens.items():
                counts[kind] += int(profile[position].argmax()) in dims
            if profiles is None:
                profiles = {kind: {"position": pos, "phi": float(phi[pos]), "profile": profile[pos],
                                   "top_dims": profile[pos].topk(5).indices.tolist()} for kind, pos in tokens.items()}  # fmt: skip
                profiles["scene"], profiles["question"] = e.index, e.question
    length = max(m.shape[1] for m in magnitudes)
    stacked = torch.stack([torch.nn.functional.pad(m, (0, 0, 0, length - m.shape[1])) for m in magnitudes])
    first_tokens = torch.stack([torch.nn.functional.pad(c, (0, length - c.shape[0])) for c in candidates])
    threshold = 20 / 64 * lm.d_model**0.5  # discovery's default: the paper's 20 at width 4096, relative
    found, _ = ops.discover_sink_dims(stacked, first_tokens, threshold=threshold)
    fig, axes = figure(3, 1, figsize=(7.5, 6.4), sharex=True)
    reached = profiles["visual_sink"]["phi"] >= study.tau
    labels = {"bos": "BOS (first token)",
              "visual_sink": f"image token with the largest phi ({'a visual sink' if reached else 'below tau: no visual sink'})",
              "visual_non_sink": "image token with the smallest phi (visual non-sink)"}  # fmt: skip
    for ax, kind in zip(axes, labels):
        values = profiles[kind]["profile"]
        ax.plot(range(lm.d_model), values, lw=0.7, color="C0")
        for d in dims:
            ax.plot([d], [values[d]], "o", color="C3", ms=5, label=f"sink dim {d}: {values[d]:.1f}")
        ax.set_ylabel("|x_d| / RMS(x)")
        ax.set_title(f"{labels[kind]}, position {profiles[kind]['position']}, phi = {profiles[kind]['phi']:.1f}", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
    axes[-1].set_xlabel("hidden dimension d")
    fig.suptitle(study.title("hidden-state profiles", f"layer {layer}") + f" (scene {profiles['scene']})", fontsize=10)
    fig.tight_layout()
    return study.finish(fig, {
        "layer": layer, "tokens": profiles,
        "prompts_with_a_visual_sink": n_with_sink, "largest_image_phi_reaches_tau": reached,
        "largest_dim_is_a_sink_dim": counts,
        "discovered_sink_dims": list(found), "discovery_threshold": threshold,
        "registered_sink_dims": list(dims),
    })  # fmt: skip


if __name__ == "__main__":
    main()
