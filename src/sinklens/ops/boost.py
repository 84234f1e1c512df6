"""PAI-style image attention boost on pre-softmax scores (SPEC section 6).

PAI ("Paying More Attention to Image", Liu et al., ECCV 2024) raises the
pre-softmax score of every image key by `alpha` times its magnitude, so the
softmax gives the image more attention. It acts before the softmax; VAR acts
after it, on the pattern.

>>> import torch
>>> scores = torch.tensor([[[[1.0, -2.0, 0.5]]]])         # one query over 3 keys
>>> image = torch.tensor([[False, True, True]])
>>> boost_image_scores(scores, image, torch.tensor([[True]]), alpha=0.5)[0, 0, 0].tolist()
[1.0, -1.0, 0.75]
"""

from __future__ import annotations

import torch
from sinklens.ops._typing import Bool, Float
from torch import Tensor

from sinklens.ops.masking import visible_keys


def boost_image_scores(
    scores: Float[Tensor, "batch head query key"],
    image: Bool[Tensor, "batch key"],
    queries: Bool[Tensor, "batch query"],
    *,
    alpha: float,
) -> Float[Tensor, "batch head query key"]:
    """`scores + alpha * |scores|` on the image keys of the chosen queries; every other score unchanged.

    A key the causal or padding mask hides (its score at the dtype's minimum)
    stays hidden: boosting it by alpha >= 1 would make it the largest score.
    """
    where = image[:, None, None, :] & queries[:, None, :, None] & visible_keys(scores)
    return torch.where(where, scores + alpha * scores.abs(), scores)
