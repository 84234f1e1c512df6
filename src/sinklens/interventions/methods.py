"""Three published training-free attention interventions: VAF (ClearSight), SPIN and HGAI.

Each is a frozen dataclass like `PAI`, with the defaults its authors publish for
LLaVA-1.5-7B (32 layers). Their layer ranges are published for that depth; on
another model they are mapped by one rule, `scaled_layers`, unless `layers` is
given.

>>> scaled_layers(9, 15, 32)           # VAF's layers 9-14 on LLaVA-1.5-7B itself
(9, 10, 11, 12, 13, 14)
>>> scaled_layers(9, 15, 6), scaled_layers(5, 19, 6), scaled_layers(0, 32, 6)
((1, 2), (0, 1, 2, 3), (0, 1, 2, 3, 4, 5))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

# ops by name, not the package: a hook function shipped to NDIF carries only what it calls
from sinklens.errors import ParameterError
from sinklens.hook_points import block
from sinklens.interventions import params
from sinklens.ops import hgai_scores, spin_head_keep, vaf_scores
from sinklens.run import Hook, RunContext, resolve_layers, writable, write_rows

PUBLISHED_DEPTH = 32  # LLaVA-1.5-7B's decoder layers, the depth every default layer range below is published for


def scaled_layers(first: int, stop: int, n_layers: int, published_depth: int = PUBLISHED_DEPTH) -> tuple[int, ...]:
    """The layers of an `n_layers` model that stand for the published layers `first..stop-1` of a deeper one.

    The rule: layer `l` of `n_layers` spans the share `[l / n_layers, (l + 1) / n_layers)`
    of the depth; it is taken when that share overlaps the published layers'
    share `[first / published_depth, stop / published_depth)`. So layers
    `floor(first * n / D)` to `ceil(stop * n / D) - 1`: the published layers
    themselves at `n = D`, and at least one layer at any depth (`first < stop`).
    """
    params.integer_in("first", first, 0, published_depth - 1)
    params.integer_in("stop", stop, first + 1, published_depth)
    params.integer_in("n_layers", n_layers, 1, 1 << 20)
    low = first * n_layers // published_depth
    high = min(math.ceil(stop * n_layers / published_depth), n_layers)
    return tuple(range(low, max(high, low + 1)))


# ---- VAF --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VAF:
    """ClearSight's Visual Amplification Fusion: image scores times `1 + alpha`, system-prompt scores times `1 - beta`.

    "ClearSight: Visual Signal Enhancement for Object Hallucination Mitigation
    in Multimodal Large Language Models" (2025); code:
    github.com/ustc-hyin/ClearSight, `visaug/inference/AttnAdapter.py` (the rule)
    and `visaug/inference/infer_pope.py` / `infer_pope.sh` (layers `9 <= i < 15`,
    `--enh-para 1.15 --sup-para 0.95`, hence alpha 0.15 and beta 0.05).

    Acts at `blocks.{l}.attn.hook_attn_scores` on the text queries after the
    image in prefill and on every generated token (`RunContext.query_rows`),
    multiplying the scores themselves (not |scores|, as the code does).
    Layers: the published 9-14 (0-based, of 32) mapped by `scaled_layers`.

    Where sinklens deviates, and why:
    - rows and columns are found from the prompt's image spans, by absolute
      position, not by the code's fixed LLaVA-1.5 offsets (`SYS_LEN = 35`,
      `IMG_LEN = 576`) and its `q_len > SYS_LEN + IMG_LEN` test, so any model,
      any number of image tokens, padding and shared prefixes work;
    - "system-prompt columns" are each prompt's tokens before its first image
      token (the code's columns `0..34`: BOS, the system prompt and "USER: "),
      padding excluded; text between two images is neither image nor system;
    - masked keys (causal, padding, sliding window) stay masked: the code scales
      before adding the mask, so it never scales a masked score either.
    """

    # shared image prefixes (sinklens.run.prefixes): edits the rows of text queries after the last image only,
    # none of them in the prefix
    prefix_safe: ClassVar[bool] = True

    alpha: float = 0.15
    beta: float = 0.05
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        params.non_negative("alpha", self.alpha)
        params.unit_interval("beta", self.beta)

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """`layers`, else the published 9-14 of 32 mapped to `n_layers` (`scaled_layers`)."""
        return resolve_layers(self.layers, n_layers, range(*_bounds(scaled_layers(9, 15, n_layers))))

    def hooks(self, ctx: RunContext) -> list[Hook]:
        fn = partial(_vaf, alpha=self.alpha, beta=self.beta)
        return [Hook(block(layer, "attn.hook_attn_scores"), fn, query_rows=True)
                for layer in self.layers_for(ctx.n_layers)]  # fmt: skip


def system_positions(image: Tensor, attention_mask: Tensor) -> Tensor:
    """`[batch, pos]`: each prompt's real tokens before its first image token (VAF's system prompt)."""
    return (image.long().cumsum(-1) == 0) & attention_mask.to(image.device)


def _vaf(scores: Tensor, ctx: RunContext, *, alpha: float, beta: float) -> Tensor:
    rows = ctx.query_rows(scores)
    n_keys = scores.shape[-1]
    image = ctx.keys(ctx.image.mask, n_keys, scores.device)
    system = ctx.keys(system_positions(ctx.image.mask, ctx.attention_mask), n_keys, scores.device)
    return write_rows(scores, rows, vaf_scores(rows.of(scores), image, system, rows.queries, alpha, beta))


def _bounds(layers: tuple[int, ...]) -> tuple[int, int]:
    return layers[0], layers[-1] + 1


# ---- SPIN -------------------------------------------------------------------------------------

SPIN_KEY = "_spin_heads"  # ctx.scratch[SPIN_KEY][layer]: the kept heads, from the scores to hook_z of one pass


@dataclass(frozen=True, kw_only=True)
class SPIN:
    """SPIN: on the last query row, scale the output of the heads that attend least to the image by `alpha`.

    "Mitigating Hallucinations in Vision-Language Models through Image-Guided
    Head Suppression" (EMNLP 2025, arXiv 2505.16411); code: github.com/YUECHE77/SPIN, `attentionSPIN.py`
    (the rule, `llama_new_forward`) and its README (LLaVA-1.5 POPE:
    `--start-layer 0 --end-layer 32 --routed-heads 0.8 --small-num-mask 0.1`;
    CHAIR captions: `--routed-heads 0.95 --small-num-mask 0.08`).

    Per layer, at `blocks.{l}.attn.hook_attn_scores`, the last query row
    (`RunContext.last_rows`: each prompt's last position in prefill, the new
    token while decoding) ranks the heads (`sinklens.ops.spin_head_keep`: image
    score sums over their std across heads, softmax over heads, top
    `int(keep * heads)`, truncated); at `blocks.{l}.attn.hook_z` of the same
    layer and pass the other heads' outputs on that row are multiplied by
    `alpha` (`alpha=None`: zeroed, the code's `small_num_mask=None`). The kept
    heads travel between the two points in `ctx.scratch`, the run's own scratch
    space, and are taken out when used: nothing outlives the run or the pass.

    Defaults: keep 0.8 and alpha 0.1, the POPE setting; for captions use
    `SPIN(keep=0.95, alpha=0.08)`. Layers: every layer, as the published 0-32
    of 32 (`scaled_layers(0, 32, L)` is every layer at any depth).

    Where sinklens deviates, and why:
    - image keys come from the prompt's image spans, not fixed
      `img_start_idx:img_end_idx`, and only the keys the row sees are summed
      (a sliding-window layer hides some; LLaMA hides none from the last row);
    - the ranking runs in fp32, and a zero or undefined std divides by 1
      (`spin_head_keep` says why).
    """

    # shared image prefixes (sinklens.run.prefixes): edits each prompt's last row only, found by absolute position,
    # which is after its question: a pass over a prefix edits nothing
    prefix_safe: ClassVar[bool] = True

    keep: float = 0.8
    alpha: float | None = 0.1
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        params.number("keep", self.keep)
        if not 0.0 < self.keep <= 1.0:
            raise ParameterError(
                f"keep must be in (0, 1] (the share of heads SPIN keeps: 0.8 for POPE, 0.95 for captions), "
                f"got {self.keep}"
            )
        if self.alpha is not None:
            params.unit_interval("alpha", self.alpha)

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """`layers`, else the published 0-31 of 32 mapped to `n_layers`: every layer."""
        return resolve_layers(self.layers, n_layers, range(*_bounds(scaled_layers(0, 32, n_layers))))

    def hooks(self, ctx: RunContext) -> list[Hook]:
        hooks = []
        scale = 0.0 if self.alpha is None else self.alpha
        for layer in self.layers_for(ctx.n_layers):
            hooks += [
                Hook(block(layer, "attn.hook_attn_scores"), partial(_spin_rank, layer=layer, keep=self.keep),
                     writes=False, query_rows=True),
                Hook(block(layer, "attn.hook_z"), partial(_spin_scale, layer=layer, alpha=scale)),
            ]  # fmt: skip
        return hooks


def _spin_rank(scores: Tensor, ctx: RunContext, *, layer: int, keep: float) -> None:
    """Rank the heads on each prompt's last row; keep (the kept heads, which prompts have that row here)."""
    rows = ctx.last_rows(scores)
    has = rows.queries.any(-1)  # [batch]: the prompt's last row is in this tensor (never in a prefix pass)
    ranked = None
    if bool(has.any()):
        # the tensor's last row: each prompt's last position (left padding) or the new token
        last = scores[:, :, -1, :]
        image = ctx.keys(ctx.image.mask, scores.shape[-1], scores.device)
        ranked = (spin_head_keep(last, image, keep), has)
    ctx.scratch.setdefault(SPIN_KEY, {})[layer] = ranked


def _spin_scale(z: Tensor, ctx: RunContext, *, layer: int, alpha: float) -> Tensor | None:
    ranked = ctx.scratch.get(SPIN_KEY, {}).pop(layer, None)
    if ranked is None:
        return None
    kept, has = ranked
    batch, n_heads = kept.shape
    factor = torch.where(kept | ~has[:, None].to(kept.device), 1.0, alpha).to(z.device, z.dtype)  # [batch, head]
    out = writable(z)
    last = out[:, -1].reshape(batch, n_heads, -1)  # hook_z: [batch, pos, head * d_head]
    out[:, -1] = (last * factor[:, :, None]).reshape(out[:, -1].shape)
    return out


# ---- HGAI -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HGAI:
    """Heads-guided intervention: on the last row, image scores plus `alpha` times their mean |score| over heads.

    Jiang et al., "Devils in Middle Layers of Large Vision-Language Models:
    Interpreting, Detecting and Mitigating Object Hallucinations via Attention
    Lens" (CVPR 2025); code:
    github.com/ZhangqiJiang07/middle_layers_indicating_hallucinations,
    `modify_attention.py` (the rule, aggregation "mean", and `llama_head_guide`)
    and `chair_eval.py` (alpha 0.5, `--guide-range 5,18`).

    Acts at `blocks.{l}.attn.hook_attn_scores` on the last query row only, as
    the code (`attn_weights[:, :, -1, img]`): each prompt's last position in
    prefill, the new token while decoding (`RunContext.last_rows`).

    Layers: 5-18 inclusive of 32, mapped by `scaled_layers`. The paper calls
    the range "5-18"; `llama_head_guide` alone would run `range(5, 18)`, which
    excludes 18, but `chair_eval.py`, the published run, adds one first
    (`guided_layer_range[1] += 1  # [start, end]`, and its released log is named
    `layers_5-19`): sinklens follows that run, `range(5, 19)`. Pass
    `layers=range(5, 18)` (on a 32-layer model) for the other reading.

    Where sinklens deviates, and why: image keys come from the prompt's image
    spans, not fixed `img_start_idx:img_end_idx`; the last row is found by
    absolute position (so a shared-prefix pass edits nothing); masked keys
    (a sliding-window layer's) stay masked.
    """

    # shared image prefixes (sinklens.run.prefixes): edits each prompt's last row only, found by absolute position,
    # which is after its question: a pass over a prefix edits nothing
    prefix_safe: ClassVar[bool] = True

    alpha: float = 0.5
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        params.non_negative("alpha", self.alpha)

    def layers_for(self, n_layers: int) -> tuple[int, ...]:
        """`layers`, else the published 5-18 of 32 mapped to `n_layers` (`scaled_layers`)."""
        return resolve_layers(self.layers, n_layers, range(*_bounds(scaled_layers(5, 19, n_layers))))

    def hooks(self, ctx: RunContext) -> list[Hook]:
        fn = partial(_hgai, alpha=self.alpha)
        return [Hook(block(layer, "attn.hook_attn_scores"), fn, query_rows=True)
                for layer in self.layers_for(ctx.n_layers)]  # fmt: skip


def _hgai(scores: Tensor, ctx: RunContext, *, alpha: float) -> Tensor:
    rows = ctx.last_rows(scores)
    image = ctx.keys(ctx.image.mask, scores.shape[-1], scores.device)
    return write_rows(scores, rows, hgai_scores(rows.of(scores), image, rows.queries, alpha))
