"""The rows route: sdpa for every query, explicit scores and pattern only for the rows a run asks for.

`rows_attention_forward` is an attention function in transformers' sense
(registered through `AttentionInterface` under `ROWS`, so every architecture
whose attention calls the interface gets it without a patched modeling file).
For one call it takes the first query row to compute explicitly,
`sinklens_first_row` (a keyword argument; None: no row):

- rows `[0, first)` go through transformers' own sdpa function, on the keys
  they can see (with a causal mask, the first `offset + first`);
- rows `[first, q)` are computed as transformers' `eager_attention_forward`
  computes them: scaled scores plus the additive mask, an fp32 softmax cast to
  the query dtype, dropout as the module's training flag says, times the
  values (under GQA, query head `h` reads key/value head `h // groups`, without
  copying the keys and values);
- the two parts are joined along the query axis.

So a call with no row selected is plain sdpa, and the rows that are selected
give, to float rounding, the output eager attention gives them. The scores
and the pattern of the selected rows (`[batch, head, rows, key]`) are named
assignments of this function, so nnsight's `.source` reaches them at
`attention_interface_1.source.scores_1` (pre-softmax, scaled and masked: the
`hook_attn_scores` of the rows) and `...source.pattern_0` (post-softmax:
`hook_pattern`), and an edit to either flows into those rows' output. Every
call also binds the values at `...source.values_0` (`hook_v`), whatever the
rows. Who chooses the rows is the run: the nnsight backend writes
`sinklens_first_row` into the inputs of the layers and steps whose stack reads
a score or a pattern there (`docs/architecture.md`, "Attention routes").

The mask this implementation gets is sdpa's (`ROWS` is registered with
transformers' sdpa mask function): None when a causal mask is enough, else a
boolean `[batch, 1, q, key]` mask; the explicit rows turn it into eager's
additive mask (0 where allowed, the dtype's minimum elsewhere), so a fully
masked row (left padding) gets eager's uniform row.

Registering is explicit (`register()`; `sinklens.load(..., attention="rows")`
does it): importing sinklens changes nothing in transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

ROWS = "sinklens_rows"  # the attention implementation's name in transformers' AttentionInterface
FIRST_ROW = "sinklens_first_row"  # the keyword argument that selects the explicit rows of one call
# the operations of rows_attention_forward that nnsight's .source names (checked by tests/test_rows_attention.py):
# every hook point the rows route finds inside its function, and where
ROWS_OPS = {"attn.hook_v": "values_0", "attn.hook_attn_scores": "scores_1", "attn.hook_pattern": "pattern_0"}
# the points that hold only the explicit rows (hook_v holds every key's values on every call)
EXPLICIT_ROW_POINTS = ("attn.hook_attn_scores", "attn.hook_pattern")

__all__ = ["EXPLICIT_ROW_POINTS", "FIRST_ROW", "ROWS", "ROWS_OPS", "register", "rows_attention_forward", "use_rows"]


def rows_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sinklens_first_row: int | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention with sdpa for rows `[0, first)` and eager's arithmetic for rows `[first, q)`.

    Shapes as transformers passes them: query `[batch, head, q, d]`, key and
    value `[batch, kv_head, key, d]`; returns `([batch, q, head, d], None)`
    (no attention weights: the pattern of the explicit rows is not the whole
    pattern, so it is never handed out as the model's `attentions`).
    """
    values = value  # every call binds this (hook_v), whatever the rows
    n_queries = query.shape[2]
    first = n_queries if sinklens_first_row is None else min(max(int(sinklens_first_row), 0), n_queries)
    if first == n_queries:
        return _sdpa(module, query, key, values, attention_mask, scaling, dropout, kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    offset = key.shape[2] - n_queries  # keys before the first query: the KV cache
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    groups = query.shape[1] // key.shape[1]
    head = None
    if first > 0:
        head, _ = _sdpa_head(module, query, key, values, attention_mask, first, offset, causal, scaling, dropout, kwargs)
    scores = _grouped_matmul(query[:, :, first:], key.transpose(2, 3), groups) * scaling
    scores = scores + _rows_mask(attention_mask, first, offset, n_queries, key.shape[2], causal, query)
    pattern = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    rows_output = _grouped_matmul(pattern, values, groups).transpose(1, 2)
    attn_output = rows_output if head is None else torch.cat([head, rows_output], dim=1)
    return attn_output.contiguous(), None


def _sdpa(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
    scaling: float | None, dropout: float, kwargs: dict[str, Any],
) -> tuple[Tensor, None]:
    from transformers import AttentionInterface

    return AttentionInterface()["sdpa"](module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)


def _sdpa_head(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, first: int, offset: int,
    causal: bool, scaling: float, dropout: float, kwargs: dict[str, Any],
) -> tuple[Tensor, None]:
    """sdpa for rows `[0, first)`; under a plain causal mask they see only the first `offset + first` keys.

    A mask given explicitly decides alone which keys a row sees: it may open
    keys after a row (Gemma 3's image tokens attend to each other both ways,
    and a first explicit row can fall inside an image), so every key is kept.
    """
    seen = key.shape[2] if mask is not None or not causal else offset + first
    if mask is not None:
        mask = mask[:, :, :first, :seen]
    elif causal and offset > 0 and first > 1:
        # transformers' sdpa would set is_causal, which aligns the rows with the first keys, not the last
        mask = _causal_seen(0, first, offset, seen, query.device)
    # (no mask and offset 0: the rows see keys [0, first) causally, which is what is_causal does)
    return _sdpa(module, query[:, :, :first], key[:, :, :seen], value[:, :, :seen], mask, scaling, dropout, kwargs)


def _grouped_matmul(rows: Tensor, other: Tensor, groups: int) -> Tensor:
    """`rows @ other` where query head h reads key/value head h // groups: [b, h, r, x] @ [b, kv, x, y] -> [b, h, r, y]."""
    batch, heads, n_rows, width = rows.shape
    grouped = rows.reshape(batch, heads // groups, groups * n_rows, width)
    return torch.matmul(grouped, other).reshape(batch, heads, n_rows, other.shape[-1])


def _rows_mask(
    mask: Tensor | None, first: int, offset: int, n_queries: int, n_keys: int, causal: bool, like: Tensor
) -> Tensor:
    """Eager's additive mask for rows `[first, q)`: 0 where a key is seen, the dtype's minimum elsewhere."""
    if mask is not None and mask.dtype != torch.bool:
        return mask[:, :, first:, :]  # already additive (a custom float mask)
    if mask is not None:
        seen = mask[:, :, first:, :]
    elif causal:
        seen = _causal_seen(first, n_queries, offset, n_keys, like.device)
    else:
        seen = torch.ones(1, 1, n_queries - first, n_keys, dtype=torch.bool, device=like.device)
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where(seen, zero, torch.finfo(like.dtype).min)


def _causal_seen(start: int, stop: int, offset: int, n_keys: int, device: torch.device) -> Tensor:
    """[1, 1, stop - start, key] True where query row i (at position offset + i) sees the key."""
    rows = torch.arange(offset + start, offset + stop, device=device)
    return (torch.arange(n_keys, device=device)[None, :] <= rows[:, None])[None, None]


def register() -> None:
    """Make `ROWS` a valid attention implementation in transformers (idempotent; only adds a name)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ROWS, rows_attention_forward)
    AttentionMaskInterface.register(ROWS, AttentionMaskInterface()["sdpa"])


def use_rows(model: Any, text_config_field: str) -> None:
    """Switch the language model of a loaded LMM to the rows route; the vision tower runs sdpa.

    `text_config_field` names the sub-config of the language model (the
    catalogue's `text_config_field`).
    """
    register()
    implementations = {name: "sdpa" for name in model.config.sub_configs if name != text_config_field}
    model.set_attn_implementation({**implementations, text_config_field: ROWS})
