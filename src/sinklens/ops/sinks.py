"""Sink dimensions and sink tokens: phi(x) = max_{d in D_sink} |x_d| / RMS(x).

>>> import torch
>>> x = torch.zeros(1, 3, 4); x[0, 0, 2] = 100.0; x[0, 1:] = 1.0
>>> phi = sink_dimension_value(x, (2,))
>>> [round(v, 2) for v in phi[0].tolist()]
[2.0, 1.0, 1.0]
>>> sink_mask(phi, tau=1.5).tolist()
[[True, False, False]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sinklens.errors import SinkDimensionError
from sinklens.ops._typing import Bool, Float
from torch import Tensor

RMS_EPS = 1e-6


def dimension_magnitudes(
    resid: Float[Tensor, "batch pos d_model"], eps: float = RMS_EPS
) -> Float[Tensor, "batch pos d_model"]:
    """|x_d| / RMS(x) for every dimension d: the hidden-state profile (SPEC section 1)."""
    x = resid.float()
    rms = x.pow(2).mean(-1, keepdim=True).add(eps).sqrt()
    return x.abs() / rms


def sink_dimension_value(
    resid: Float[Tensor, "batch pos d_model"],
    dims: Sequence[int],
    eps: float = RMS_EPS,
) -> Float[Tensor, "batch pos"]:
    """phi(x): the largest |x_d| / RMS(x) over the sink dimensions, per token, in fp32."""
    if len(dims) == 0:
        raise SinkDimensionError("dims is empty: phi needs at least one sink dimension; give one or more")
    width = resid.shape[-1]
    bad = [d for d in dims if not 0 <= d < width]
    if bad:
        raise SinkDimensionError(
            f"sink dimensions {bad} do not exist: the residual stream has dimensions 0..{width - 1}; "
            "give dimensions in that range (sinklens discover-sink-dims finds them)"
        )
    x = resid.float()
    rms = x.pow(2).mean(-1).add(eps).sqrt()
    index = torch.as_tensor(list(dims), device=x.device, dtype=torch.long)
    return x.index_select(-1, index).abs().amax(-1) / rms


def sink_mask(
    phi: Float[Tensor, "batch pos"], tau: float, *, strict: bool = False
) -> Bool[Tensor, "batch pos"]:
    """Tokens whose phi reaches tau (the paper's `>=`; the released code's `>` with strict)."""
    return phi > tau if strict else phi >= tau


# Darcet et al. (2024, Fig. 3) find the high-norm tokens of DINOv2, CLIP and DeiT at roughly 10x the median norm
# of their image, with no tokens in between; 4x keeps every such token and no token of an ordinary tower
# (toy-llava's DINOv2-S reaches 2.2x its median at most)
DEFAULT_HIGH_NORM_RATIO = 4.0


def high_norm_tokens(
    resid: Float[Tensor, "..."], *, ratio: float = DEFAULT_HIGH_NORM_RATIO, threshold: float | None = None
) -> tuple[Float[Tensor, "rows tokens"], Bool[Tensor, "rows tokens"]]:
    """(norms, high) of a vision residual `[rows, tokens, d]` or `[tokens, d]` (one row): fp32 norms, bool mask."""
    x = resid.float()
    rows = x if x.dim() == 3 else x[None]
    norms = torch.linalg.vector_norm(rows, dim=-1)
    if threshold is not None:
        return norms, norms > threshold
    return norms, norms > ratio * norms.median(dim=-1, keepdim=True).values
