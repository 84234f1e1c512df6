"""Image attention, visual non-sink ratio and image-centric selection (SPEC section 2).

All functions take attention rows `[batch, head, query, key]` (usually only the
rows of the queries an intervention acts on) and boolean key masks `[batch, key]`.
"""

from __future__ import annotations

import einops
import torch
from sinklens.ops._typing import Bool, Float
from torch import Tensor


def key_mass(
    rows: Float[Tensor, "batch head query key"], keys: Bool[Tensor, "batch key"]
) -> Float[Tensor, "batch head query"]:
    """Attention each query pays to the keys marked in `keys`."""
    return einops.einsum(
        rows, keys.to(rows.dtype), "batch head query key, batch key -> batch head query"
    )


def visual_nonsink_ratio(
    rows: Float[Tensor, "batch head query key"],
    image: Bool[Tensor, "batch key"],
    sink: Bool[Tensor, "batch key"],
    *,
    eps_per_image_token: float = 0.0,
) -> tuple[Float[Tensor, "batch head query"], Float[Tensor, "batch head query"]]:
    """(r, s): the share of image attention on non-sink image tokens, and the image attention.

    `eps_per_image_token` adds that much per image token to the denominator, as the
    released code does (SPEC section 5, item 4). With 0, a row with no image
    attention has r = 0.
    """
    image_attention = key_mass(rows, image)
    nonsink = key_mass(rows, image & ~sink)
    denominator = image_attention + eps_per_image_token * image.sum(-1).to(rows.dtype)[:, None, None]
    # where: a row with no image attention would divide 0 by 0
    ratio = torch.where(denominator > 0, nonsink / denominator.clamp_min(1e-30), 0.0)
    return ratio, image_attention


def image_centric(
    ratio: Float[Tensor, "batch head query"],
    image_attention: Float[Tensor, "batch head query"],
    *,
    rho: float,
    summ: float,
    inverted_rho: bool = False,
) -> Bool[Tensor, "batch head query"]:
    """Which (head, query) pairs are image-centric.

    Paper: image attention >= summ and r >= rho. Released code (`inverted_rho`):
    image attention >= summ and the sink share 1 - r <= rho.
    """
    centred = (1.0 - ratio) <= rho if inverted_rho else ratio >= rho
    return (image_attention >= summ) & centred


def mean_head_ratio(
    ratio: Float[Tensor, "batch head query"], queries: Bool[Tensor, "batch query"]
) -> Float[Tensor, "batch head"]:
    """A head's score for figures: r averaged over the given (text) queries."""
    weight = queries.to(ratio.dtype)[:, None, :]
    return (ratio * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)
