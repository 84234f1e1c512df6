"""Three published training-free attention edits, as pure ops on pre-softmax scores.

- `vaf_scores`: ClearSight's Visual Amplification Fusion (2025): the
  scores of image keys times `1 + alpha`, those of system-prompt keys times `1 - beta`.
- `spin_head_keep`: SPIN (EMNLP 2025, arXiv 2505.16411): which heads keep their output on
  the last query row, ranked by their image scores.
- `hgai_scores`: the heads-guided attention intervention of "Devils in Middle Layers"
  (Jiang et al., CVPR 2025): image scores plus `alpha` times their mean magnitude over heads.

Every op leaves a key the causal, padding or sliding-window mask hides (its score at
the dtype's minimum) as it is: scaling or shifting it could bring it back into view.

>>> import torch
>>> scores = torch.tensor([[[[1.0, -2.0, 0.5]]]])           # one head, one query over 3 keys
>>> image, system = torch.tensor([[False, True, True]]), torch.tensor([[True, False, False]])
>>> vaf_scores(scores, image, system, torch.tensor([[True]]), alpha=0.5, beta=0.5)[0, 0, 0].tolist()
[0.5, -3.0, 0.75]
>>> hgai_scores(scores, image, torch.tensor([[True]]), alpha=0.5)[0, 0, 0].tolist()
[1.0, -1.0, 0.75]
>>> spin_head_keep(torch.tensor([[[0.0, 3.0], [0.0, 1.0], [0.0, 2.0]]]), torch.tensor([[False, True]]), keep=0.7)
tensor([[ True, False,  True]])
"""

from __future__ import annotations

import torch
from sinklens.ops._typing import Bool, Float
from torch import Tensor

from sinklens.ops.masking import visible_keys


def vaf_scores(
    scores: Float[Tensor, "batch head query key"],
    image_keys: Bool[Tensor, "batch key"],
    system_keys: Bool[Tensor, "batch key"],
    queries: Bool[Tensor, "batch query"],
    alpha: float,
    beta: float,
) -> Float[Tensor, "batch head query key"]:
    """For the chosen queries: image scores times `1 + alpha`, system-prompt scores times `1 - beta`.

    The scores themselves are multiplied, not their magnitudes, as ClearSight's
    `AttnAdapter` does (`attn_weights[..., img] = enh_para * attn_weights[..., img]`
    with `enh_para = 1 + alpha`): a negative image score becomes more negative.
    A key marked both image and system counts as image. Computed in the scores' dtype.
    """
    factor = torch.where(image_keys, 1.0 + alpha, torch.where(system_keys, 1.0 - beta, 1.0)).to(scores.dtype)
    where = queries[:, None, :, None] & (image_keys | system_keys)[:, None, None, :] & visible_keys(scores)
    return torch.where(where, scores * factor[:, None, None, :], scores)


def spin_head_keep(
    scores_last_row: Float[Tensor, "batch head key"],
    image_keys: Bool[Tensor, "batch key"],
    keep: float,
) -> Bool[Tensor, "batch head"]:
    """The heads SPIN keeps on a query row: the top `int(keep * heads)` by their gate.

    As SPIN's `attentionSPIN.py`: each head's pre-softmax scores summed over the
    image keys (s_h), divided by their standard deviation across heads (unbiased,
    torch's default), a softmax over heads (the gates), and `torch.topk` of
    `int(keep * heads)` heads: the count truncates (25 of 32 heads at keep 0.8,
    30 of 32 at 0.95, 6 of 8 at 0.8) and can be 0 when keep < 1 / heads, as in
    the code. Ties are broken by `torch.topk`.

    Where sinklens differs: only the image keys the query sees are summed (a
    sliding-window layer hides some; LLaMA, the code's model, hides none from the
    last row); a standard deviation of 0 or NaN (every head equal, or one head)
    divides by 1 instead, which ranks the heads the same way (the code would make
    every gate NaN). Computed in fp32 (fp64 for fp64 scores); the code's fp16
    could tie heads that differ.
    """
    dtype = torch.float64 if scores_last_row.dtype == torch.float64 else torch.float32
    seen = image_keys[:, None, :] & visible_keys(scores_last_row[:, :, None, :])[:, :, 0, :]
    image_sum = torch.where(seen, scores_last_row.to(dtype), 0.0).sum(-1)
    std = image_sum.std(dim=1, keepdim=True) if image_sum.shape[1] > 1 else torch.ones_like(image_sum[:, :1])
    std = torch.where(std > 0, std, torch.ones_like(std))  # NaN > 0 is False: NaN divides by 1 as well
    gates = torch.softmax(image_sum / std, dim=1)
    count = int(keep * image_sum.shape[1])  # truncation, as int(self.routed_head * self.num_heads)
    kept = torch.zeros_like(gates, dtype=torch.bool)
    if count > 0:
        kept.scatter_(1, torch.topk(gates, k=count, dim=1).indices, True)
    return kept


def hgai_scores(
    scores: Float[Tensor, "batch head query key"],
    image_keys: Bool[Tensor, "batch key"],
    queries: Bool[Tensor, "batch query"],
    alpha: float,
) -> Float[Tensor, "batch head query key"]:
    """For the chosen queries: each image score plus `alpha` times the mean over heads of |score| at that key.

    As `modify_attention.py` of "Devils in Middle Layers":
    `S[:, :, -1, img] += alpha * S[:, :, -1, img].abs().mean(dim=1)`, one shift
    per (query, key) shared by every head. Computed in the scores' dtype.
    """
    where = queries[:, None, :, None] & image_keys[:, None, None, :] & visible_keys(scores)
    shift = torch.where(where, scores, 0.0).abs().mean(dim=1, keepdim=True)
    return torch.where(where, scores + alpha * shift, scores)
