"""Visual contrastive decoding (VCD, Leng et al., CVPR 2024; SPEC section 6).

`contrastive_logits` combines the logits of a pass with the image and a pass
with a noised image: `(1 + alpha) * l(v) - alpha * l(v')`, keeping only the
tokens that are plausible under the image pass (adaptive plausibility
cut-off: `p(token | v) >= beta * max p(. | v)`, the others get -inf).
`diffusion_noise` makes the noised image the way VCD does: the forward
diffusion process at step `t` of a 1000-step sigmoid beta schedule.

>>> import torch
>>> image = torch.tensor([[2.0, 1.0, -3.0]])
>>> noised = torch.tensor([[1.0, 1.5, 0.0]])
>>> contrastive_logits(image, noised, alpha=1.0, beta=0.1).tolist()
[[3.0, 0.5, -inf]]
"""

from __future__ import annotations

import math

import torch
from sinklens.ops._typing import Float
from torch import Tensor

DIFFUSION_STEPS = 1000


def contrastive_logits(
    logits: Float[Tensor, "*batch vocab"],
    contrast: Float[Tensor, "*batch vocab"],
    *,
    alpha: float,
    beta: float,
) -> Float[Tensor, "*batch vocab"]:
    """`(1 + alpha) * logits - alpha * contrast` where `logits` is plausible, -inf elsewhere.

    Plausible: `logits >= log(beta) + max(logits)`, the same as
    `softmax(logits) >= beta * max softmax(logits)`; `beta = 0` keeps every token.
    """
    combined = (1.0 + alpha) * logits - alpha * contrast
    if beta <= 0.0:
        return combined
    cutoff = math.log(beta) + logits.amax(-1, keepdim=True)
    return combined.masked_fill(logits < cutoff, float("-inf"))


def diffusion_schedule(step: int) -> tuple[float, float]:
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) of VCD's sigmoid schedule at step `t` (0-based)."""
    betas = torch.sigmoid(torch.linspace(-6, 6, DIFFUSION_STEPS, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)[step]
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


def diffusion_noise(
    pixels: Float[Tensor, "*shape"], noise: Float[Tensor, "*shape"], *, step: int
) -> Float[Tensor, "*shape"]:
    """The image at diffusion step `step`: `sqrt(a_t) * pixels + sqrt(1 - a_t) * noise` (noise ~ N(0, 1))."""
    signal, spread = diffusion_schedule(step)
    return signal * pixels + spread * noise
