"""PAI: raise the pre-softmax scores of image keys (Liu et al., ECCV 2024; SPEC section 6).

Acts at `blocks.{l}.attn.hook_attn_scores`, before the softmax, so in a stack it
runs before VAR (which acts at `hook_pattern`) in the same layer whatever the
list order. Only the attention-boost half of PAI: its image / no-image logit
contrast is a logits-level method (see `LogitsHook` and `VCD`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar
from functools import partial

from torch import Tensor

# ops by name, not the package: a hook function shipped to NDIF carries only what it calls
from sinklens.ops import boost_image_scores
from sinklens.hook_points import block
from sinklens.interventions import params
from sinklens.run import Hook, RunContext, resolve_layers, write_rows


@dataclass(frozen=True, kw_only=True)
class PAI:
    """Add `alpha * |score|` to the scores of image keys, for the queries VAR acts on.

    Queries: the text after the image during prefill and every generated token
    while decoding (`RunContext.text_queries`). Layers default to 2..L-1, the
    layers where visual sinks exist. The defaults (alpha 0.5, layers from 2) are
    not checked against PAI's released code, which is not available here; set
    both explicitly to reproduce a published setting.
    """

    # shared image prefixes (sinklens.run.prefixes): acts on the text queries after the last image only, none of
    # them in the prefix
    prefix_safe: ClassVar[bool] = True

    alpha: float = 0.5
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        params.non_negative("alpha", self.alpha)

    def hooks(self, ctx: RunContext) -> list[Hook]:
        layers = resolve_layers(self.layers, ctx.n_layers, range(2, ctx.n_layers))
        fn = partial(_boost_scores, alpha=self.alpha)
        return [Hook(block(layer, "attn.hook_attn_scores"), fn, query_rows=True) for layer in layers]


def _boost_scores(scores: Tensor, ctx: RunContext, *, alpha: float) -> Tensor:
    # only the rows of text queries after the image are read and written; masks on the scores' device
    rows = ctx.query_rows(scores)
    image = ctx.keys(ctx.image.mask, scores.shape[-1], scores.device)
    return write_rows(scores, rows, boost_image_scores(rows.of(scores), image, rows.queries, alpha=alpha))
