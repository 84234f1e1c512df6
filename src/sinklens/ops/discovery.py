"""Sink-dimension discovery from data (SPEC section 1).

Scan |x_d| / RMS(x) per layer at the first token and other delimiter tokens of a
few prompts; a dimension is a sink dimension when it is massive (above a
threshold) in most layers from `first_layer` on, in (nearly) every prompt.

>>> import torch
>>> m = torch.ones(2, 4, 3, 8)  # prompt, layer, pos, d_model
>>> m[:, 1:, 0, 5] = 30.0       # dim 5 of the first token is massive from layer 1 on
>>> dims, share = discover_sink_dims(m, torch.tensor([True, False, False]), threshold=20.0, first_layer=1)
>>> dims, share[5].item()
((5,), 1.0)
"""

from __future__ import annotations

import torch
from sinklens.errors import ParameterError
from sinklens.ops._typing import Bool, Float
from torch import Tensor


def massive_layers(
    magnitudes: Float[Tensor, "prompt layer pos d_model"],
    candidates: Bool[Tensor, "*prompt pos"],
    threshold: float,
) -> Bool[Tensor, "prompt layer d_model"]:
    """Whether dimension d is massive (> threshold) at any candidate token, per prompt and layer."""
    if candidates.dim() == 1:
        candidates = candidates.expand(magnitudes.shape[0], -1)
    masked = magnitudes.masked_fill(~candidates[:, None, :, None], 0.0)
    return masked.amax(dim=2) > threshold


def discover_sink_dims(
    magnitudes: Float[Tensor, "prompt layer pos d_model"],
    candidates: Bool[Tensor, "*prompt pos"],
    *,
    threshold: float,
    first_layer: int = 2,
    layer_share: float = 0.5,
    prompt_share: float = 1.0,
) -> tuple[tuple[int, ...], Float[Tensor, " d_model"]]:
    """(sink dimensions, each dimension's share of prompts in which it qualifies).

    A dimension qualifies in a prompt when it is massive at a candidate token in
    more than `layer_share` of the layers `first_layer..L-1`; it is a sink
    dimension when it qualifies in at least `prompt_share` of the prompts.
    Dimensions come back ordered by how often they are massive, most first.
    """
    if not 0 <= first_layer < magnitudes.shape[1]:
        raise ParameterError(
            f"first_layer {first_layer} is outside the {magnitudes.shape[1]} layers scanned; "
            f"give a layer in 0..{magnitudes.shape[1] - 1}"
        )
    if not candidates.any():
        raise ParameterError("no candidate tokens: mark at least the first token of each prompt")
    massive = massive_layers(magnitudes, candidates, threshold)[:, first_layer:]  # [prompt, layer, d]
    layer_fraction = massive.float().mean(dim=1)  # [prompt, d]
    qualifies = layer_fraction > layer_share
    prompt_fraction = qualifies.float().mean(dim=0)
    chosen = (prompt_fraction >= prompt_share - 1e-9).nonzero().flatten()
    order = layer_fraction.mean(0)[chosen].argsort(descending=True, stable=True)
    return tuple(int(d) for d in chosen[order]), prompt_fraction
