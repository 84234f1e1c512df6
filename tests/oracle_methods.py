"""Naive loop oracles for VAF, SPIN and HGAI, written from the papers' released code, not from sinklens.

Each op oracle turns its tensors into Python lists and loops over batch, head,
query and key in float64. The hook oracles below apply the same edits inside a
run as plain `(hook name, fn)` functions: they find their rows and keys from the
prompt's image mask and the step themselves (not through `RunContext.query_rows`,
`last_rows` or `keys`), and edit through the loop oracles.

- VAF (ClearSight, `visaug/inference/AttnAdapter.py`): for the text queries after
  the image, S <- (1 + alpha) S on image keys and (1 - beta) S on the keys before
  the first image.
- SPIN (`attentionSPIN.py`): on the last row, s_h = sum of head h's scores over the
  image keys; gates = softmax_h(s_h / std_h(s), unbiased std); keep the top
  int(keep * H) heads; every other head's output on that row times alpha.
- HGAI (`modify_attention.py`): on the last row, S[h, k] <- S[h, k] + alpha * mean_h' |S[h', k]|
  for image keys k.
A key whose score is at the dtype's minimum (masked) is never edited or summed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _hidden(value: float, dtype: torch.dtype) -> bool:
    return not value > torch.finfo(dtype).min / 2


def _f64(values: list) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---- the ops ----------------------------------------------------------------------------------


def vaf(scores: Tensor, image: Tensor, system: Tensor, queries: Tensor, alpha: float, beta: float) -> Tensor:
    out = scores.double().tolist()
    image_l, system_l, queries_l = image.tolist(), system.tolist(), queries.tolist()
    for b, heads in enumerate(out):
        for head in heads:
            for q, row in enumerate(head):
                if not queries_l[b][q]:
                    continue
                for k, value in enumerate(row):
                    if _hidden(value, scores.dtype):
                        continue
                    if image_l[b][k]:
                        row[k] = (1.0 + alpha) * value
                    elif system_l[b][k]:
                        row[k] = (1.0 - beta) * value
    return _f64(out)


def spin_gates(scores_last_row: Tensor, image: Tensor) -> list[list[float]]:
    """Per prompt, the gate of each head: softmax over heads of the image-score sums over their unbiased std."""
    gates = []
    for b, heads in enumerate(scores_last_row.double().tolist()):
        sums = [sum(v for k, v in enumerate(row) if image[b, k] and not _hidden(v, scores_last_row.dtype))
                for row in heads]  # fmt: skip
        n = len(sums)
        mean = sum(sums) / n
        std = math.sqrt(sum((s - mean) ** 2 for s in sums) / (n - 1)) if n > 1 else 0.0
        normed = [s / std if std > 0 else s for s in sums]
        top = max(normed)
        exps = [math.exp(v - top) for v in normed]
        gates.append([e / sum(exps) for e in exps])
    return gates


def spin_keep(scores_last_row: Tensor, image: Tensor, keep: float) -> Tensor:
    """`[batch, head]`: the top int(keep * heads) heads by gate (ties: the lower head first)."""
    kept = []
    for gates in spin_gates(scores_last_row, image):
        count = int(keep * len(gates))
        order = sorted(range(len(gates)), key=lambda h: (-gates[h], h))
        chosen = set(order[:count])
        kept.append([h in chosen for h in range(len(gates))])
    return torch.tensor(kept, dtype=torch.bool)


def hgai(scores: Tensor, image: Tensor, queries: Tensor, alpha: float) -> Tensor:
    values = scores.double().tolist()
    out = scores.double().tolist()
    n_heads = len(values[0])
    for b in range(len(values)):
        for q in range(len(values[b][0])):
            if not queries[b, q]:
                continue
            for k in range(len(values[b][0][q])):
                column = [values[b][h][q][k] for h in range(n_heads)]
                if not image[b, k] or _hidden(column[0], scores.dtype):
                    continue
                shift = sum(abs(v) for v in column) / n_heads
                for h in range(n_heads):
                    out[b][h][q][k] = column[h] + alpha * shift
    return _f64(out)


# ---- where a run's rows and keys are, found independently -------------------------------------


def prompt_rows(ctx, n_rows: int) -> Tensor:
    """`[batch, n_rows]` for a scores tensor holding every row: the text queries after the last image (prefill),
    the new token (decoding)."""
    # the image's extent: an image ends at its last token, which may be markup (LLaVA-NeXT's last image-newline)
    image = (ctx.image.region if ctx.image.region is not None else ctx.image.mask).cpu()
    batch, length = image.shape
    if not ctx.prefill:
        return torch.ones(batch, n_rows, dtype=torch.bool)
    assert n_rows == length, "the oracle hooks run on the eager route: every row"
    rows = torch.zeros(batch, n_rows, dtype=torch.bool)
    real = ctx.attention_mask.cpu()
    for b in range(batch):
        last_image = max(p for p in range(length) if image[b, p])
        for p in range(last_image + 1, length):
            rows[b, p] = bool(real[b, p])
    return rows


def last_row(ctx, n_rows: int) -> Tensor:
    """`[batch, n_rows]`: each prompt's last position (prefill), the new token (decoding)."""
    rows = torch.zeros(ctx.image.mask.shape[0], n_rows, dtype=torch.bool)
    rows[:, -1] = True
    return rows & prompt_rows(ctx, n_rows)


def key_mask(ctx, positions: Tensor, n_keys: int) -> Tensor:
    """A prompt-position mask over a tensor's keys: the last n_keys positions so far (generated ones are False)."""
    total = ctx.image.mask.shape[1] + (0 if ctx.prefill else ctx.step)
    full = torch.zeros(positions.shape[0], total, dtype=torch.bool)
    full[:, : positions.shape[1]] = positions.cpu()
    return full[:, total - n_keys :]


def before_first_image(ctx) -> Tensor:
    image, real = ctx.image.mask.cpu(), ctx.attention_mask.cpu()
    out = torch.zeros_like(image)
    for b in range(image.shape[0]):
        first = min(p for p in range(image.shape[1]) if image[b, p])
        for p in range(first):
            out[b, p] = bool(real[b, p])
    return out


# ---- hook functions: the edits applied by the oracles -----------------------------------------


def vaf_hook(alpha: float, beta: float):
    def fn(scores: Tensor, ctx) -> Tensor:
        n_keys = scores.shape[-1]
        image = key_mask(ctx, ctx.image.mask, n_keys)
        system = key_mask(ctx, before_first_image(ctx), n_keys)
        new = vaf(scores.cpu(), image, system, prompt_rows(ctx, scores.shape[-2]), alpha, beta)
        return new.to(scores.device, scores.dtype)

    return fn


def hgai_hook(alpha: float):
    def fn(scores: Tensor, ctx) -> Tensor:
        image = key_mask(ctx, ctx.image.mask, scores.shape[-1])
        new = hgai(scores.cpu(), image, last_row(ctx, scores.shape[-2]), alpha)
        return new.to(scores.device, scores.dtype)

    return fn


def spin_hooks(layers, keep: float, alpha: float | None) -> list:
    """(scores reader, hook_z editor) pairs per layer; the kept heads pass through a dict of this run's hooks."""
    kept: dict[int, Tensor] = {}
    scale = 0.0 if alpha is None else alpha

    def rank(scores: Tensor, ctx, *, layer: int) -> None:
        image = key_mask(ctx, ctx.image.mask, scores.shape[-1])
        kept[layer] = spin_keep(scores[:, :, -1, :].cpu(), image, keep)

    def scale_heads(z: Tensor, ctx, *, layer: int) -> Tensor:
        heads = kept.pop(layer)
        out = z.clone()
        batch, n_heads = heads.shape
        d_head = z.shape[-1] // n_heads
        for b in range(batch):
            for h in range(n_heads):
                if not heads[b, h]:
                    out[b, -1, h * d_head : (h + 1) * d_head] = z[b, -1, h * d_head : (h + 1) * d_head] * scale
        return out

    pairs = []
    for layer in layers:
        pairs.append((f"blocks.{layer}.attn.hook_attn_scores", _named(rank, layer)))
        pairs.append((f"blocks.{layer}.attn.hook_z", _named(scale_heads, layer)))
    return pairs


def _named(fn, layer: int):
    def call(tensor, ctx):
        return fn(tensor, ctx, layer=layer)

    return call


def scaled_layers(first: int, stop: int, n_layers: int, depth: int = 32) -> tuple[int, ...]:
    """Every layer whose share of the depth [l/n, (l+1)/n) overlaps [first/depth, stop/depth), by exact fractions."""
    from fractions import Fraction

    lo, hi = Fraction(first, depth), Fraction(stop, depth)
    return tuple(layer for layer in range(n_layers)
                 if Fraction(layer, n_layers) < hi and Fraction(layer + 1, n_layers) > lo)
