"""VAR: visual attention redistribution in image-centric heads (SPEC sections 2, 3 and 5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

# ops by name, not the package: a hook function shipped to NDIF carries only what it calls
from sinklens.ops import image_centric, redistribute, visual_nonsink_ratio
from sinklens.hook_points import block
from sinklens.interventions import params
from sinklens.interventions.base import Hook, RunContext, resolve_layers

RELEASED_EPS_PER_IMAGE_TOKEN = 1e-6


@dataclass(frozen=True, kw_only=True)
class VAR:
    """Move `p` of the sink attention of image-centric (head, query) pairs onto visual non-sinks.

    Acts at `blocks.{l}.attn.hook_pattern` on the text queries after the image
    (prefill) and on every generated token (decoding), with the sink sets that
    FindSinks found on the prompt. Layers default to 2..L-2 (paper) or 2..L-1
    (released code, whose last-layer exclusion is shadowed).

    convention="released" reproduces the authors' code (SPEC section 5): rho
    bounds the sink share (1 - r <= rho), sinks keep p and 1 - p moves, no head
    is selected in a layer without a visual sink, the ratio's denominator adds
    1e-6 per image token, and the edit runs in the model dtype.
    """

    p: float = 0.6
    rho: float = 0.8
    summ: float = 0.2
    convention: params.Convention = "paper"
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        for name in ("p", "rho", "summ"):
            params.unit_interval(name, getattr(self, name))
        params.convention(self.convention)

    def hooks(self, ctx: RunContext) -> list[Hook]:
        last = ctx.n_layers - 1 if self.convention == "paper" else ctx.n_layers
        layers = resolve_layers(self.layers, ctx.n_layers, range(2, last))
        # plain values, not `self`: a shipped hook function then carries no VAR class (docs/remote.md)
        fn = partial(_redistribute_pattern, p=self.p, rho=self.rho, summ=self.summ, released=self.convention == "released")
        return [Hook(block(layer, "attn.hook_pattern"), partial(fn, layer=layer)) for layer in layers]


def _redistribute_pattern(
    pattern: Tensor, ctx: RunContext, *, layer: int, p: float, rho: float, summ: float, released: bool
) -> Tensor:
    sinks = ctx.sinks.get(layer)
    if sinks is None:
        raise RuntimeError(
            f"VAR at layer {layer} needs that layer's sink set: put FindSinks(...) before VAR in the "
            f"stack, with its layers covering {layer}"
        )
    n_queries, n_keys = pattern.shape[-2:]
    queries = ctx.text_queries(n_queries, pattern.device)
    # only the rows of text queries after the image are read and written (each prompt's own rows
    # are chosen by `queries`; in a left-padded batch the earliest text start bounds them all)
    first = int(ctx.image.text_start.min()) if ctx.prefill else 0
    rows = pattern[:, :, first:, :]
    if not released:
        rows = rows.float()
    image = ctx.keys(ctx.image.mask, n_keys, pattern.device)
    sink = ctx.keys(sinks, n_keys, pattern.device)
    ratio, image_attention = visual_nonsink_ratio(
        rows, image, sink, eps_per_image_token=RELEASED_EPS_PER_IMAGE_TOKEN if released else 0.0
    )
    selected = image_centric(ratio, image_attention, rho=rho, summ=summ, inverted_rho=released)
    selected &= queries[:, None, first:]
    if released:  # the released code selects nothing in a layer without a visual sink
        selected &= (image & sink).any(-1)[:, None, None]
    keep = p if released else 1.0 - p
    new_rows = redistribute(rows, sink, image & ~sink, selected, keep=keep)
    ctx.record("var", {"layer": layer, "step": ctx.step, "n_image_centric": int(selected.sum())})
    # in place when nothing needs the original for backward: no full [q, k] copy
    out = pattern.clone() if torch.is_grad_enabled() else pattern
    out[:, :, first:, :] = new_rows.to(pattern.dtype)
    return out
