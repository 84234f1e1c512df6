"""Key masking: remove attention to chosen keys before the softmax (SPEC section 4)."""

from __future__ import annotations

import torch
from sinklens.ops._typing import Bool, Float
from torch import Tensor


def visible_keys(scores: Float[Tensor, "batch head query key"]) -> Bool[Tensor, "batch head query key"]:
    """Keys a query can see: not pushed to the dtype's minimum by the causal or padding mask."""
    return scores > torch.finfo(scores.dtype).min / 2


def mask_keys(
    scores: Float[Tensor, "batch head query key"],
    keys: Bool[Tensor, "batch key"],
    queries: Bool[Tensor, "batch query"],
) -> Float[Tensor, "batch head query key"]:
    """Set the pre-softmax scores of `keys` to -inf for the chosen `queries`.

    A query that would have no visible key left keeps all of its scores (it is
    exempt), so the softmax never sees a row of -inf.
    """
    visible = visible_keys(scores)
    remove = keys[:, None, None, :] & queries[:, None, :, None]
    left = (visible & ~remove).any(-1, keepdim=True)
    return scores.masked_fill(remove & left, float("-inf"))
