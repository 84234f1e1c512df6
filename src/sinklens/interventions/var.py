"""VAR: visual attention redistribution in image-centric heads (SPEC sections 2, 3 and 5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

# ops by name, not the package: a hook function shipped to NDIF carries only what it calls
from sinklens.ops import image_centric, redistribute, visual_nonsink_ratio, visual_sink_share
from sinklens.hook_points import block
from sinklens.interventions import params
from sinklens.run import Hook, RunContext, resolve_layers, write_rows

RELEASED_EPS_PER_IMAGE_TOKEN = 1e-6
HeadMode = Literal["image_centric", "all"]
Destination = Literal["image", "text", "both"]
HEAD_MODES: tuple[str, ...] = get_args(HeadMode)
DESTINATIONS: tuple[str, ...] = get_args(Destination)


@dataclass(frozen=True, kw_only=True)
class VAR:
    """Move `p` of the sink attention of image-centric (head, query) pairs onto visual non-sinks.

    Acts at `blocks.{l}.attn.hook_pattern` on the text queries after the image
    (prefill) and on every generated token (decoding), with the sink sets that
    FindSinks found on the prompt. Layers default to 2..L-2 (paper) or 2..L-1
    (released code, whose last-layer exclusion is shadowed).

    convention="released" reproduces the authors' code (SPEC section 5): rho
    bounds the visual-sink share (q = vs / (s + N * 1e-6) <= rho, with vs the
    attention on visual sinks and N the image tokens), sinks keep p and 1 - p
    moves, no head is selected in a layer without a visual sink, and the edit
    runs in the model dtype.

    Two options for the paper's ablations (defaults are the method):
    - `heads="all"` moves the budget in every (head, text query) pair, skipping
      the image-centric selection (rho, summ, and the released code's rule of
      no selection in a layer without a visual sink);
    - `destination` says which keys receive the budget, in proportion to the
      attention they have: "image" (visual non-sinks, the method), "text" (text
      tokens that are not sinks, generated tokens included) or "both" (every
      non-sink key).
    """

    # shared image prefixes (sinklens.run.prefixes): acts on the text queries after the last image only, none of
    # them in the prefix
    prefix_safe: ClassVar[bool] = True

    p: float = 0.6
    rho: float = 0.8
    summ: float = 0.2
    convention: params.Convention = "paper"
    layers: Sequence[int] | None = None
    heads: HeadMode = "image_centric"
    destination: Destination = "image"

    def __post_init__(self) -> None:
        for name in ("p", "rho", "summ"):
            params.unit_interval(name, getattr(self, name))
        params.convention(self.convention)
        params.one_of("heads", self.heads, HEAD_MODES)
        params.one_of("destination", self.destination, DESTINATIONS)

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """The layers VAR acts on in a model of `n_layers`: `layers`, else 2..L-2 (paper) or 2..L-1 (released)."""
        last = n_layers - 1 if self.convention == "paper" else n_layers
        return resolve_layers(self.layers, n_layers, range(2, last))

    def hooks(self, ctx: RunContext) -> list[Hook]:
        layers = self.layers_for(ctx.n_layers)
        # plain values, not `self`: a shipped hook function then carries no VAR class (docs/remote.md)
        fn = partial(_redistribute_pattern, p=self.p, rho=self.rho, summ=self.summ, released=self.convention == "released",
                     heads=self.heads, destination=self.destination)  # fmt: skip
        return [Hook(block(layer, "attn.hook_pattern"), partial(fn, layer=layer), query_rows=True) for layer in layers]


def _redistribute_pattern(
    pattern: Tensor, ctx: RunContext, *, layer: int, p: float, rho: float, summ: float, released: bool,
    heads: HeadMode = "image_centric", destination: Destination = "image",
) -> Tensor:
    sinks = ctx.layer_sinks(layer, "VAR")
    n_keys = pattern.shape[-1]
    # only the rows of text queries after the image are read and written (each prompt's own rows
    # are chosen by `rows.queries`; in a left-padded batch the earliest text start bounds them all)
    rows = ctx.query_rows(pattern)
    image = ctx.keys(ctx.image.mask, n_keys, pattern.device)
    sink = ctx.keys(sinks, n_keys, pattern.device)
    new_rows, selected = edit_rows(
        rows.of(pattern), image, sink, rows.queries, p=p, rho=rho, summ=summ, released=released, heads=heads,
        destination=destination,
    )
    ctx.found.add("var", {"layer": layer, "step": ctx.step, "n_image_centric": int(selected.sum())})
    # in place when nothing needs the original for backward: no full [q, k] copy
    return write_rows(pattern, rows, new_rows)


def edit_rows(
    rows: Tensor, image: Tensor, sink: Tensor, queries: Tensor, *, p: float, rho: float, summ: float,
    released: bool, heads: HeadMode = "image_centric", destination: Destination = "image",
) -> tuple[Tensor, Tensor]:
    """VAR on attention rows `[batch, head, query, key]`: (the new rows, the (head, query) pairs selected).

    `image` and `sink` are key masks `[batch, key]`, `queries` `[batch, query]`
    the rows VAR may act on. The paper convention computes in fp32; the
    released one in the rows' dtype, as the authors' code does.
    """
    if not released:
        rows = rows.float()
    # paper: r = non-sink image mass / s >= rho; released (SPEC 5.1): q = visual-sink mass / (s + N eps) <= rho
    share, image_attention = (visual_sink_share(rows, image, sink, eps_per_image_token=RELEASED_EPS_PER_IMAGE_TOKEN)
                              if released else visual_nonsink_ratio(rows, image, sink))  # fmt: skip
    if heads == "all":
        selected = queries[:, None, :].expand(share.shape)
    else:
        selected = image_centric(share, image_attention, rho=rho, summ=summ, sink_share=released)
        selected &= queries[:, None, :]
        if released:  # the released code selects nothing in a layer without a visual sink
            selected &= (image & sink).any(-1)[:, None, None]
    keep = p if released else 1.0 - p
    # padding keys hold no attention, so they never receive any in proportion
    target = {"image": image, "text": ~image, "both": torch.ones_like(image)}[destination] & ~sink
    return redistribute(rows, sink, target, selected, keep=keep), selected
