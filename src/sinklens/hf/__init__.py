"""What sinklens adds to transformers, below every other room.

- `rows_attention`: the rows route's attention function, registered in
  transformers' `AttentionInterface` on request (`sinklens.load(..., attention="rows")`).
- `processors`: image-only processors for families whose full processor insists
  on torchvision for videos.

This module itself imports neither torch nor transformers: it names the routes.
"""

from typing import Literal, get_args

# the language model's attention routes: eager's full pattern in every layer, or sdpa with explicit rows
AttentionRoute = Literal["eager", "rows"]
ATTENTION_ROUTES: tuple[str, ...] = get_args(AttentionRoute)

__all__ = ["ATTENTION_ROUTES", "AttentionRoute"]
