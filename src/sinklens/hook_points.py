"""The one vocabulary: TransformerLens-style hook names and the order they run in.

Per decoder layer `l` of the language model, in the order a forward pass reaches
them:

    blocks.{l}.hook_resid_pre        residual stream entering layer l   [batch, pos, d_model]
    blocks.{l}.attn.hook_v           value vectors (with the KV cache)  [batch, kv_head, pos, d_head]
    blocks.{l}.attn.hook_attn_scores pre-softmax scores, scaled, masked [batch, head, q, k]
    blocks.{l}.attn.hook_pattern     post-softmax attention             [batch, head, q, k]
    blocks.{l}.attn.hook_z           per-head output before W_O         [batch, pos, head*d_head]
    blocks.{l}.hook_attn_out         attention output after W_O         [batch, pos, d_model]
    blocks.{l}.hook_resid_mid        residual after attention           [batch, pos, d_model]
    blocks.{l}.hook_resid_post       residual leaving layer l           [batch, pos, d_model]

and once per model, after every layer: `hook_logits` [batch, pos, vocab].

>>> parse("blocks.3.attn.hook_pattern")
HookPoint(layer=3, stage=3, name='blocks.3.attn.hook_pattern')
>>> sorted([parse("blocks.1.hook_resid_pre"), parse("blocks.0.attn.hook_pattern")])[0].name
'blocks.0.attn.hook_pattern'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sinklens.errors import HookNameError

LAYER_POINTS: tuple[str, ...] = (
    "hook_resid_pre",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_resid_post",
)
MODEL_POINTS: tuple[str, ...] = ("hook_logits",)
_AFTER_EVERY_LAYER = 1 << 30
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


@dataclass(frozen=True, order=True)
class HookPoint:
    """A parsed hook name; instances sort in the order a forward pass reaches them."""

    layer: int
    stage: int
    name: str

    @property
    def in_block(self) -> bool:
        """True for per-layer points, False for model-level ones such as hook_logits."""
        return self.layer != _AFTER_EVERY_LAYER

    @property
    def kind(self) -> str:
        """The name without its layer: `attn.hook_pattern` for `blocks.3.attn.hook_pattern`."""
        match = _BLOCK.fullmatch(self.name)
        return match.group(2) if match else self.name


def parse(name: str) -> HookPoint:
    """Parse a hook name, or fail naming the valid ones."""
    match = _BLOCK.fullmatch(name)
    if match and match.group(2) in LAYER_POINTS:
        return HookPoint(int(match.group(1)), LAYER_POINTS.index(match.group(2)), name)
    if name in MODEL_POINTS:
        return HookPoint(_AFTER_EVERY_LAYER, MODEL_POINTS.index(name), name)
    raise HookNameError(
        f"unknown hook name {name!r}. Use 'blocks.{{layer}}.<point>' with <point> one of "
        f"{', '.join(LAYER_POINTS)}, or one of {', '.join(MODEL_POINTS)}."
    )


def block(layer: int, point: str) -> str:
    """The full hook name of `point` in `layer`: block(2, 'attn.hook_pattern')."""
    return parse(f"blocks.{layer}.{point}").name
