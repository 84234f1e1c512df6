"""Naive loop oracles for the peer-method ops (PAI boost, VCD), written from their papers' formulas.

Same rules as oracles.py: Python floats (double precision), one element at a
time, no vectorisation shared with sinklens.ops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def boost_image_scores(scores: Tensor, image: Tensor, queries: Tensor, alpha: float) -> Tensor:
    """PAI: s + alpha * |s| on image keys of the chosen queries; masked scores (the dtype's minimum) stay."""
    masked = torch.finfo(scores.dtype).min / 2
    out = scores.double().tolist()
    for b, heads in enumerate(out):
        for head in heads:
            for i, row in enumerate(head):
                if not queries[b, i]:
                    continue
                for j, s in enumerate(row):
                    if image[b, j] and s > masked:
                        row[j] = s + alpha * abs(s)
    return torch.tensor(out, dtype=torch.float64)


def contrastive_logits(logits: Tensor, contrast: Tensor, alpha: float, beta: float) -> Tensor:
    """VCD: (1 + alpha) l - alpha l' where softmax(l) >= beta * max softmax(l), else -inf; rows = last dim."""
    flat_l = logits.double().reshape(-1, logits.shape[-1]).tolist()
    flat_c = contrast.double().reshape(-1, contrast.shape[-1]).tolist()
    out = []
    for row_l, row_c in zip(flat_l, flat_c, strict=True):
        top = max(row_l)
        total = sum(math.exp(v - top) for v in row_l)
        probabilities = [math.exp(v - top) / total for v in row_l]
        best = max(probabilities)
        out.append([
            (1 + alpha) * l - alpha * c if p >= beta * best else float("-inf")
            for l, c, p in zip(row_l, row_c, probabilities, strict=True)
        ])
    return torch.tensor(out, dtype=torch.float64).reshape(logits.shape)


def diffusion_coefficients(step: int, n_steps: int = 1000) -> tuple[float, float]:
    """VCD's schedule: betas = sigmoid(linspace(-6, 6)) * (5e-3 - 1e-5) + 1e-5; alpha_bar = prod(1 - beta)."""
    alpha_bar = 1.0
    for t in range(step + 1):
        x = -6 + 12 * t / (n_steps - 1)
        beta = 1 / (1 + math.exp(-x)) * (0.5e-2 - 1e-5) + 1e-5
        alpha_bar *= 1 - beta
    return math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)


def diffusion_noise(pixels: Tensor, noise: Tensor, step: int) -> Tensor:
    signal, spread = diffusion_coefficients(step)
    return signal * pixels.double() + spread * noise.double()
