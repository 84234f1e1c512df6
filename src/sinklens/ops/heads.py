"""Image attention, visual non-sink ratio, visual-sink share and image-centric selection (SPEC 2, 5.1).

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
) -> tuple[Float[Tensor, "batch head query"], Float[Tensor, "batch head query"]]:
    """(r, s): the share of image attention on non-sink image tokens, and the image attention s.

    The paper's ratio (SPEC section 2). A row with no image attention has r = 0.
    """
    image_attention = key_mass(rows, image)
    return _share(key_mass(rows, image & ~sink), image_attention), image_attention


def visual_sink_share(
    rows: Float[Tensor, "batch head query key"],
    image: Bool[Tensor, "batch key"],
    sink: Bool[Tensor, "batch key"],
    *,
    eps_per_image_token: float = 0.0,
) -> tuple[Float[Tensor, "batch head query"], Float[Tensor, "batch head query"]]:
    """(q, s): the visual-sink mass over the image attention, and the image attention s.

    The released code's share (SPEC section 5, item 1): `q = vs / (s + N * eps)`,
    with `vs` the attention on visual sinks and `N` each prompt's number of image
    tokens. It is computed from `vs` itself: `1 - r` with the same denominator
    would be `(vs + N * eps) / (s + N * eps)`, larger than q. A row whose
    denominator is 0 has q = 0.
    """
    image_attention = key_mass(rows, image)
    n_image = image.sum(-1).to(rows.dtype)[:, None, None]
    return _share(key_mass(rows, image & sink), image_attention + eps_per_image_token * n_image), image_attention


def _share(part: Tensor, whole: Tensor) -> Tensor:
    """part / whole, and 0 where whole is 0 (no image attention)."""
    # whole >= part >= 0, so the quotient is at most 1 even when whole is subnormal
    # (a clamp to some floor instead would shrink the share of a tiny but positive whole)
    safe = torch.where(whole > 0, whole, 1.0)
    return torch.where(whole > 0, part / safe, 0.0)


def image_centric(
    share: Float[Tensor, "batch head query"],
    image_attention: Float[Tensor, "batch head query"],
    *,
    rho: float,
    summ: float,
    sink_share: bool = False,
) -> Bool[Tensor, "batch head query"]:
    """Which (head, query) pairs are image-centric: image attention >= summ, and the share against rho.

    Paper: `share` is the visual non-sink ratio r (`visual_nonsink_ratio`), kept
    when r >= rho. Released code (`sink_share=True`): `share` is the visual-sink
    share q (`visual_sink_share`), kept when q <= rho.
    """
    centred = share <= rho if sink_share else share >= rho
    return (image_attention >= summ) & centred


def mean_head_ratio(
    ratio: Float[Tensor, "batch head query"], queries: Bool[Tensor, "batch query"]
) -> Float[Tensor, "batch head"]:
    """A head's score for figures: r averaged over the given (text) queries."""
    weight = queries.to(ratio.dtype)[:, None, :]
    return (ratio * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)
