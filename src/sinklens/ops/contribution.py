"""Attention contribution c_ij = || a_ij W_O^h W_V^h x~_j || (SPEC section 4).

Because a_ij is a non-negative scalar, c_ij = a_ij * || W_O^h v_j^h ||: the norm of
each head's output per key is computed once, never per (query, key) pair.
"""

from __future__ import annotations

import einops
from sinklens.errors import ShapeError
from sinklens.ops._typing import Float
from torch import Tensor


def head_value_outputs(
    value: Float[Tensor, "batch kv_head key d_head"],
    w_o: Float[Tensor, "d_model head_x_d_head"],
    n_heads: int,
) -> Float[Tensor, "batch head key d_model"]:
    """W_O^h v_j^h for every head and key; GQA key/value heads are shared by their query heads."""
    n_kv = value.shape[1]
    if n_heads % n_kv:
        raise ShapeError(
            f"{n_heads} query heads cannot share {n_kv} key/value heads evenly; pass the value tensor and the "
            "head count of one attention layer (n_heads a multiple of the key/value heads)"
        )
    value = einops.repeat(value, "batch kv key d -> batch (kv group) key d", group=n_heads // n_kv)
    w_o = einops.rearrange(w_o, "d_model (head d) -> head d d_model", head=n_heads)
    return einops.einsum(value, w_o, "batch head key d, head d d_model -> batch head key d_model")


def attention_contribution(
    pattern: Float[Tensor, "batch head query key"],
    value_outputs: Float[Tensor, "batch head key d_model"],
) -> Float[Tensor, "batch head query key"]:
    """|| a_ij W_O^h v_j^h || for every head, query and key."""
    return pattern * value_outputs.norm(dim=-1)[:, :, None, :]
