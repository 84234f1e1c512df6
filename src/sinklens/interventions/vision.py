"""The vision tower's own sinks: high-norm tokens per vision layer (where visual sinks are born).

Vision transformers grow a few tokens of very large norm in their later layers
(Darcet et al., "Vision Transformers Need Registers", ICLR 2024): tokens of
low-information patches that the tower uses as scratch space. `FindVisionSinks`
marks them at `vision.blocks.{l}.hook_resid_post`, on the tower's own token
grid: each row of the tower's batch (an image, a tile or crop; Qwen's flat
patch list is one row) and each of its tokens (CLS or registers included where
the tower has them), so nothing is assumed about how the projector maps tokens
to the language model's image tokens. `studies/vision_to_language_sinks.py`
relates them to the language model's visual sinks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from torch import Tensor

from sinklens.errors import ParameterError
from sinklens.hook_points import vision_block
from sinklens.interventions import params
from sinklens.ops.sinks import DEFAULT_HIGH_NORM_RATIO, high_norm_tokens
from sinklens.run import Hook, RunContext, resolve_layers



@dataclass(frozen=True, kw_only=True)
class FindVisionSinks:
    """Mark the vision tower's high-norm tokens, per vision layer, once, in the prefill.

    A token is high-norm when its residual norm exceeds `ratio` times the
    median norm of the tokens of its own row (image or crop) at that layer,
    or, with `threshold`, an absolute norm (Jiang et al.'s test-time registers
    use 30 on CLIP ViT-L). Records, per vision layer `l`:
    `ctx.records["vision_norms"][l]` (fp32, `[rows, tokens]`, the tower's
    layout with Qwen's flat patches as one row) and
    `ctx.records["vision_sinks"][l]` (bool, same shape). Layers default to
    every vision layer.
    """

    # the vision tower runs in the prefill of a whole prompt only, never in a continuation of a cached prefix
    prefix_safe: ClassVar[bool] = False

    ratio: float = DEFAULT_HIGH_NORM_RATIO
    threshold: float | None = None
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        params.positive("ratio", self.ratio)
        if self.threshold is not None:
            params.positive("threshold", self.threshold)

    def hooks(self, ctx: RunContext) -> list[Hook]:
        if not ctx.n_vision_layers:
            raise ParameterError("FindVisionSinks needs the vision tower's depth; this model's vision_config gives none")
        layers = resolve_layers(self.layers, ctx.n_vision_layers, range(ctx.n_vision_layers))
        fn = partial(_find_high_norm, ratio=self.ratio, threshold=self.threshold)
        return [Hook(vision_block(layer, "hook_resid_post"), partial(fn, layer=layer), prefill_only=True, writes=False)
                for layer in layers]  # fmt: skip


def _find_high_norm(resid: Tensor, ctx: RunContext, *, layer: int, ratio: float, threshold: float | None) -> None:
    norms, high = high_norm_tokens(resid, ratio=ratio, threshold=threshold)
    ctx.found.add("vision_norms", norms.cpu(), layer=layer)
    ctx.found.add("vision_sinks", high.cpu(), layer=layer)
