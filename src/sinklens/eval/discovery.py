"""Find a model's sink dimensions from data (no table lookup), with the evidence.

Runs a few scene prompts through the model with `SinkDimensionScan`, takes the
first token and the delimiter tokens (special tokens, newlines, full stops) as
candidates, and keeps the dimensions that `ops.discover_sink_dims` calls massive
in most layers from layer 2 on, in every prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from sinklens import ops
from sinklens.data.questions import CAPTION_PROMPT, questions
from sinklens.data.scenes import scene
from sinklens.errors import ParameterError
from sinklens.interventions.scan import SinkDimensionScan
from sinklens.models.loaded import LoadedModel
from sinklens.run import Runner

PAPER_THRESHOLD = 20.0  # SPEC: "massive (default > 20)"
PAPER_FRACTION = 20 / 64  # the same 20 relative to LLaMA-2-7B's ceiling sqrt(4096) = 64
DELIMITERS = ("\n", ".", ",", ":")


def delimiter_ids(loaded: LoadedModel) -> set[int]:
    """Special tokens (but not the image or padding token) and the ids of newline and punctuation."""
    tokenizer = loaded.tokenizer
    ids = set(tokenizer.all_special_ids) - {loaded.image_token_id}
    for text in DELIMITERS:
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1:
            ids |= set(pieces)
    return ids


def scan_prompts(loaded: LoadedModel, runner: Runner, n_prompts: int, progress: bool = True) -> dict[str, Any]:
    """Hidden-state profiles of `n_prompts` held-out scene prompts: magnitudes, candidate and image masks."""
    from tqdm.auto import tqdm

    delimiters = torch.tensor(sorted(delimiter_ids(loaded)))
    rows = []
    for index in tqdm(range(n_prompts), desc="scan |x_d|/RMS(x)", disable=not progress):
        s = scene("heldout", index)
        question = (CAPTION_PROMPT, *[qa.question for qa in questions(s)])[index % 3]
        inputs = loaded.prepare(s.image(), question)
        result = runner.forward(inputs, [SinkDimensionScan()])
        scan = result.ctx.records["scan"]
        magnitudes = torch.stack([scan[layer][0] for layer in range(loaded.n_layers)])  # [layer, pos, d]
        ids = inputs["input_ids"][0].cpu()
        real = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))[0].bool().cpu()
        first = torch.zeros_like(real)
        first[real.nonzero()[0]] = True
        candidates = (first | torch.isin(ids, delimiters)) & real
        rows.append((magnitudes, candidates, result.ctx.image.mask[0].cpu(), ids))
    length = max(m.shape[1] for m, *_ in rows)

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = length - t.shape[dim]
        return torch.cat([t, t.new_zeros(shape)], dim=dim)

    return {
        "magnitudes": torch.stack([pad(m, 1) for m, *_ in rows]),  # [prompt, layer, pos, d]
        "candidates": torch.stack([pad(c, 0) for _, c, *_ in rows]),
        "image": torch.stack([pad(i, 0) for *_, i, _ in rows]),
        "input_ids": [ids.tolist() for *_, ids in rows],
    }


def discover(
    loaded: LoadedModel,
    runner: Runner,
    *,
    n_prompts: int = 8,
    threshold: float | None = None,
    threshold_fraction: float | None = None,
    first_layer: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """The sink dimensions of `loaded` and the per-layer evidence, as a JSON-ready dict.

    The threshold on |x_d| / RMS(x) is `threshold`, or `threshold_fraction` of
    sqrt(d_model), or by default SPEC's 20.
    """
    used = _threshold(loaded, threshold, threshold_fraction)
    _check_scan(loaded, n_prompts, first_layer)
    scanned = scan_prompts(loaded, runner, n_prompts, progress)
    magnitudes, candidates, image = scanned["magnitudes"], scanned["candidates"], scanned["image"]
    dims, prompt_share = ops.discover_sink_dims(magnitudes, candidates, threshold=used, first_layer=first_layer)
    dims_list = list(dims) or [int(prompt_share.argmax())]
    ceiling = math.sqrt(loaded.d_model)
    return {
        "model": loaded.name,
        "sink_dims": list(dims),
        "d_model": magnitudes.shape[-1],
        "phi_ceiling_sqrt_d_model": round(ceiling, 3),
        "threshold": round(used, 4),
        "threshold_rule": f"{threshold_fraction:.4f} * sqrt(d_model)" if threshold_fraction is not None
        else "absolute" if threshold is not None else "SPEC default (20)",
        "first_layer": first_layer,
        "n_prompts": n_prompts,
        "rule": "massive (> threshold) at the first token or a delimiter in more than half of the layers "
                "from first_layer on, in every prompt",  # fmt: skip
        "candidate_dims": [{"dim": int(d), "share_of_prompts": float(prompt_share[d])}
                           for d in prompt_share.argsort(descending=True)[:8]],  # fmt: skip
        "per_layer": _per_layer(magnitudes, candidates, image, dims_list, used),
        "tau_sweep_layers_from_first_layer": _sweep(magnitudes, image, dims_list, first_layer, ceiling),
        "registry": loaded.sink_dims_source,
        "registry_dims": list(loaded.sink_dims or ()),
    }


def _threshold(loaded: LoadedModel, threshold: float | None, threshold_fraction: float | None) -> float:
    """The absolute threshold on |x_d| / RMS(x), checked against phi's ceiling sqrt(d_model)."""
    if threshold is not None and threshold_fraction is not None:
        raise ParameterError("give threshold or threshold_fraction, not both")
    ceiling = math.sqrt(loaded.d_model)
    used = threshold_fraction * ceiling if threshold_fraction is not None else threshold if threshold is not None else PAPER_THRESHOLD
    if not used > 0:  # NaN too
        raise ParameterError(
            f"threshold {used:g} must be > 0: every dimension would pass it. Use a positive threshold "
            f"(SPEC's 20) or threshold_fraction (e.g. 0.3125)."
        )
    if not used < ceiling:
        raise ParameterError(
            f"threshold {used:g} is at or above sqrt(d_model) = {ceiling:.1f}, which |x_d| / RMS(x) never exceeds; "
            "no dimension could pass it. Use a smaller threshold or threshold_fraction."
        )
    return used


def _check_scan(loaded: LoadedModel, n_prompts: int, first_layer: int) -> None:
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ParameterError(f"n_prompts (--prompts) must be an integer >= 1, got {n_prompts!r}")
    if isinstance(first_layer, bool) or not isinstance(first_layer, int) or not 0 <= first_layer < loaded.n_layers:
        raise ParameterError(
            f"first_layer (--first-layer) must be in [0, {loaded.n_layers - 1}]: {loaded.name} has "
            f"{loaded.n_layers} layers, got {first_layer!r}"
        )


def _per_layer(
    magnitudes: torch.Tensor, candidates: torch.Tensor, image: torch.Tensor, dims: list[int], used: float
) -> list[dict[str, Any]]:
    """Per layer: the top dimensions at the delimiters, phi of the first token and of the image tokens, the rest."""
    massive = ops.massive_layers(magnitudes, candidates, used)  # [prompt, layer, d]
    index = torch.tensor(dims)
    phi_first = magnitudes[:, :, 0][..., index].amax(-1)  # [prompt, layer]; prompts are unpadded: 0 is the first token
    phi_image = magnitudes[..., index].amax(-1).masked_fill(~image[:, None, :], 0.0)  # [prompt, layer, pos]
    other = magnitudes.clone()
    other[..., index] = 0.0
    rows = []
    for layer in range(magnitudes.shape[1]):
        at_candidates = magnitudes[:, layer].masked_fill(~candidates[:, :, None], 0.0).amax(dim=1).mean(0)
        top = at_candidates.topk(3)
        rows.append({
            "layer": layer,
            "top_dims_at_delimiters": [{"dim": int(d), "mean_max_magnitude": round(float(v), 3)}
                                       for v, d in zip(top.values, top.indices)],
            "phi_first_token": round(float(phi_first[:, layer].mean()), 3),
            "max_phi_image_tokens": round(float(phi_image[:, layer].amax()), 3),
            "n_image_tokens_over_threshold": float((phi_image[:, layer] > used).sum(-1).float().mean()),
            "max_other_dim_magnitude": round(float(other[:, layer].masked_fill(~candidates[:, :, None], 0.0).amax()), 3),
            "share_of_prompts_massive": {str(d): float(massive[:, layer, d].float().mean()) for d in dims},
        })  # fmt: skip
    return rows


def _sweep(magnitudes: torch.Tensor, image: torch.Tensor, dims: list[int], first_layer: int, ceiling: float) -> list[dict[str, float]]:
    """`tau_sweep` over fractions of sqrt(d_model), on the layers from `first_layer`."""
    phi = magnitudes[:, first_layer:][..., torch.tensor(dims)].amax(-1)  # [prompt, layer, pos]; padding has phi 0
    real = magnitudes[:, 0].abs().sum(-1) > 0
    fractions = (0.2, 0.25, PAPER_FRACTION, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    sweep = tau_sweep(phi.masked_fill(~real[:, None], 0.0), image, [f * ceiling for f in fractions])
    for row, fraction in zip(sweep, fractions):
        row["fraction_of_sqrt_d_model"] = round(fraction, 4)
    return sweep


def plot_discovery(result: dict[str, Any], path: Any) -> None:
    """Per layer: phi of the first token and the largest image-token phi in the found dims, against the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [row["layer"] for row in result["per_layer"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    dims = ", ".join(map(str, result["sink_dims"])) or "none found"
    ax.plot(layers, [r["phi_first_token"] for r in result["per_layer"]], "o-", ms=3, label=f"first token, dims {dims}")
    ax.plot(layers, [r["max_phi_image_tokens"] for r in result["per_layer"]], "s-", ms=3, label="largest image token, same dims")
    ax.plot(layers, [r["max_other_dim_magnitude"] for r in result["per_layer"]], "^-", ms=3, label="largest other dim at delimiters")
    ax.axhline(result["threshold"], color="k", ls="--", lw=0.8, label=f"threshold {result['threshold']:.2f}")
    ax.axhline(result["phi_ceiling_sqrt_d_model"], color="0.6", ls=":", lw=0.8, label="ceiling sqrt(d_model)")
    ax.set_xlabel("layer (hook_resid_pre)")
    ax.set_ylabel("|x_d| / RMS(x)")
    ax.set_title(f"{result['model']}: sink dimensions found from data ({result['n_prompts']} prompts)", fontsize=10)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def tau_sweep(phi: torch.Tensor, image: torch.Tensor, taus: Sequence[float]) -> list[dict[str, float]]:
    """Mean number of image tokens and of text tokens with phi >= tau, per tau (phi: [prompt, layer, pos])."""
    rows = []
    for tau in taus:
        over = phi >= tau
        rows.append({
            "tau": round(float(tau), 3),
            "image_sinks_per_layer": float((over & image[:, None]).sum(-1).float().mean()),
            "text_sinks_per_layer": float((over & ~image[:, None]).sum(-1).float().mean()),
        })  # fmt: skip
    return rows
