"""Pure helpers of the analysis interventions (SPEC section 4): random key sets, attention maps, sums.

>>> import torch
>>> pool = torch.tensor([[False, True, True, True, True]])
>>> chosen = random_keys(pool, torch.tensor([2]), torch.Generator().manual_seed(0))
>>> int(chosen.sum()), bool((chosen & ~pool).any())
(2, False)
"""

from __future__ import annotations

import einops
import torch
from sinklens.ops._typing import Bool, Float, Int
from torch import Tensor


def random_keys(
    pool: Bool[Tensor, "batch key"], counts: Int[Tensor, " batch"], generator: torch.Generator
) -> Bool[Tensor, "batch key"]:
    """`counts[b]` keys drawn uniformly without replacement from `pool[b]` (all of it if it is smaller).

    The draw depends only on the pool, the counts and the generator's state, so a
    seeded generator gives the same keys on every run.
    """
    # one uniform key per position, drawn on the CPU (a seeded CPU generator is reproducible everywhere)
    noise = torch.rand(pool.shape, generator=generator, dtype=torch.float64).to(pool.device)
    scores = noise.masked_fill(~pool, float("inf"))
    order = scores.argsort(dim=-1)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(pool.shape[-1], device=pool.device).expand_as(order))
    take = torch.minimum(counts.to(pool.device), pool.sum(-1))
    return (ranks < take[:, None]) & pool


def random_keys_each(
    pool: Bool[Tensor, "batch key"], counts: Int[Tensor, " batch"], own: Bool[Tensor, "batch key"], seed: int
) -> Bool[Tensor, "batch key"]:
    """`random_keys` for each prompt on its own positions (`own`: not padding), with a generator seeded `seed`.

    Each prompt draws as it would alone, whatever else is in its batch and
    however much padding it has: the draw sees only its own positions, in order,
    and a fresh generator. The loop is over the prompts of a batch.
    """
    drawn = torch.zeros_like(pool)
    for prompt in range(pool.shape[0]):
        positions = own[prompt].nonzero().flatten()
        generator = torch.Generator().manual_seed(seed)
        chosen = random_keys(pool[prompt, positions][None], counts[prompt : prompt + 1], generator)[0]
        drawn[prompt, positions] = chosen
    return drawn


def mean_query_attention(
    rows: Float[Tensor, "batch head query key"],
    queries: Bool[Tensor, "batch query"],
    heads: Bool[Tensor, " head"] | None = None,
) -> Float[Tensor, "batch key"]:
    """Attention each key receives, averaged over the chosen heads and the chosen queries of each prompt."""
    if heads is not None:
        rows = rows[:, heads]
    weight = queries.to(rows.dtype)
    per_query = einops.reduce(rows, "batch head query key -> batch query key", "mean")
    summed = einops.einsum(per_query, weight, "batch query key, batch query -> batch key")
    return summed / weight.sum(-1, keepdim=True).clamp_min(1.0)


def contribution_sum(
    rows: Float[Tensor, "batch head query key"], value_outputs: Float[Tensor, "batch head key d_model"]
) -> Float[Tensor, "batch query d_model"]:
    """sum over heads h and keys j of a_ij W_O^h v_j^h: the attention output (o_proj's, without bias)."""
    return einops.einsum(rows, value_outputs, "batch head query key, batch head key d_model -> batch query d_model")
