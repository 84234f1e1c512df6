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

The vision tower, in the same style, before any of them (it runs in the prefill
only; its tensors keep the tower's own layout, e.g. `[crops, tokens, d_vision]`
or Qwen's `[patches, d_vision]`):

    vision.blocks.{l}.hook_resid_pre       residual entering vision layer l
    vision.blocks.{l}.hook_resid_post      residual leaving vision layer l
    vision.blocks.{l}.mlp.hook_post        the MLP's hidden activation (input of its output projection)
    vision.blocks.{l}.attn.hook_pattern    post-softmax attention of vision layer l
    vision.hook_out                        the features the tower hands to the projector
    projector.hook_out                     the projector's output: the language model's image embeddings

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
VISION_LAYER_POINTS: tuple[str, ...] = ("hook_resid_pre", "attn.hook_pattern", "mlp.hook_post", "hook_resid_post")
VISION_POINTS: tuple[str, ...] = ("vision.hook_out", "projector.hook_out")
# catalogue keys of the vision points: "vision." + the layer point, and the two model-level ones
VISION_KINDS: tuple[str, ...] = tuple(f"vision.{point}" for point in VISION_LAYER_POINTS) + VISION_POINTS
_AFTER_EVERY_LAYER = 1 << 30
_VISION = -(1 << 20)  # vision layer l sorts at _VISION + l: before the language model's layer 0
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_VISION_BLOCK = re.compile(r"vision\.blocks\.(\d+)\.(.+)")


@dataclass(frozen=True, order=True)
class HookPoint:
    """A parsed hook name; instances sort in the order a forward pass reaches them."""

    layer: int
    stage: int
    name: str

    @property
    def in_block(self) -> bool:
        """True for the language model's per-layer points, False for model-level and vision points."""
        return 0 <= self.layer < _AFTER_EVERY_LAYER

    @property
    def in_vision(self) -> bool:
        """True for the vision tower's and the projector's points (they run in the prefill only)."""
        return self.layer < 0

    @property
    def vision_layer(self) -> int:
        """The vision layer of a `vision.blocks.{l}` point."""
        return self.layer - _VISION

    @property
    def kind(self) -> str:
        """The name without its layer: `attn.hook_pattern` for `blocks.3.attn.hook_pattern`,
        `vision.hook_resid_post` for `vision.blocks.3.hook_resid_post`."""
        vision = _VISION_BLOCK.fullmatch(self.name)
        if vision:
            return f"vision.{vision.group(2)}"
        match = _BLOCK.fullmatch(self.name)
        return match.group(2) if match else self.name


def parse(name: str) -> HookPoint:
    """Parse a hook name, or fail naming the valid ones."""
    match = _BLOCK.fullmatch(name)
    if match and match.group(2) in LAYER_POINTS:
        return HookPoint(int(match.group(1)), LAYER_POINTS.index(match.group(2)), name)
    if name in MODEL_POINTS:
        return HookPoint(_AFTER_EVERY_LAYER, MODEL_POINTS.index(name), name)
    vision = _VISION_BLOCK.fullmatch(name)
    if vision and vision.group(2) in VISION_LAYER_POINTS:
        return HookPoint(_VISION + int(vision.group(1)), VISION_LAYER_POINTS.index(vision.group(2)), name)
    if name in VISION_POINTS:
        return HookPoint(-len(VISION_POINTS) + VISION_POINTS.index(name), 0, name)
    raise HookNameError(
        f"unknown hook name {name!r}. Use 'blocks.{{layer}}.<point>' with <point> one of "
        f"{', '.join(LAYER_POINTS)}, one of {', '.join(MODEL_POINTS)}, 'vision.blocks.{{layer}}.<point>' with "
        f"<point> one of {', '.join(VISION_LAYER_POINTS)}, or one of {', '.join(VISION_POINTS)}."
    )


def vision_block(layer: int, point: str) -> str:
    """The full hook name of `point` in vision layer `layer`: vision_block(2, 'hook_resid_post')."""
    return parse(f"vision.blocks.{layer}.{point}").name


def block(layer: int, point: str) -> str:
    """The full hook name of `point` in `layer`: block(2, 'attn.hook_pattern')."""
    return parse(f"blocks.{layer}.{point}").name
