"""Visual attention redistribution on selected attention rows (SPEC section 3).

`redistribute` is the general move: in the selected rows, sink keys keep a share
`keep` of their attention and the rest is handed to the target keys in
proportion to what each already has. VAR is the case sink = S^l (visual and text
sinks), target = visual non-sinks, keep = 1 - p (paper) or p (released code).

>>> import torch
>>> rows = torch.tensor([[[[0.5, 0.1, 0.3, 0.1]]]])       # one row over 4 keys
>>> sink = torch.tensor([[True, False, False, False]])
>>> target = torch.tensor([[False, True, True, False]])
>>> out = redistribute(rows, sink, target, torch.ones(1, 1, 1, dtype=torch.bool), keep=0.4)
>>> [round(v, 3) for v in out[0, 0, 0].tolist()]
[0.2, 0.175, 0.525, 0.1]
"""

from __future__ import annotations

import torch
from sinklens.ops._typing import Bool, Float
from torch import Tensor

from sinklens.ops.heads import key_mass


def redistribute(
    rows: Float[Tensor, "batch head query key"],
    sink: Bool[Tensor, "batch key"],
    target: Bool[Tensor, "batch key"],
    selected: Bool[Tensor, "batch head query"],
    *,
    keep: float,
) -> Float[Tensor, "batch head query key"]:
    """Move (1 - keep) of the sink attention of the selected rows onto the target keys.

    `sink` and `target` must not overlap. Each row keeps its sum. A selected row
    with no attention on the targets is left unchanged (there is nowhere to put
    the budget in proportion).
    """
    sink_f = sink.to(rows.dtype)[:, None, None, :]
    target_f = target.to(rows.dtype)[:, None, None, :]
    budget = (1.0 - keep) * key_mass(rows, sink)
    target_mass = key_mass(rows, target)
    moved = selected & (target_mass > 0)
    # each target's share of the target mass is at most 1, even when the mass is
    # subnormal: dividing the budget by the mass instead could overflow or, clamped, lose it
    safe_mass = torch.where(target_mass > 0, target_mass, 1.0)
    share = rows * target_f / safe_mass[..., None]
    edited = rows * (1.0 + (keep - 1.0) * sink_f) + budget[..., None] * share
    return torch.where(moved[..., None], edited, rows)
