"""An independent record of what the explorer page should show: plain hook runs, no explorer code.

Every layer's full `hook_pattern` is kept at every generate step (prefill and
each decoding step) by a read-only `sinklens.Hook`; in a VAR run one hook sits
before VAR and one after it. The queries are re-derived here from the spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

import sinklens as sl


@dataclass
class OracleRun:
    tokens: list[int]
    steps: dict[tuple[int, int], torch.Tensor]  # (layer, step) -> pattern [head, q, k], after VAR in a VAR run
    before: dict[tuple[int, int], torch.Tensor]  # the same before VAR (VAR runs only)
    phi: dict[int, torch.Tensor]
    sinks: dict[int, torch.Tensor]
    prompt_length: int

    def row(self, position: int, layer: int, before: bool = False) -> torch.Tensor:
        """[head, key]: the attention row of the query at `position` (prompt, or prompt_length + k)."""
        steps = self.before if before else self.steps
        if position < self.prompt_length:
            return steps[(layer, 0)][:, position]
        return steps[(layer, position - self.prompt_length + 1)][:, -1]


def _keep(pattern, ctx, *, layer, store):
    store[(layer, ctx.step)] = pattern[0].detach().float().cpu().clone()


def oracle_run(lm, inputs, *, var=None, find=None, max_new_tokens):
    find = find or sl.FindSinks()
    after, before = {}, {}
    hooks_after = [sl.Hook(f"blocks.{l}.attn.hook_pattern", partial(_keep, layer=l, store=after), writes=False)
                   for l in range(lm.n_layers)]
    stack = [find, *hooks_after]
    if var is not None:
        hooks_before = [sl.Hook(f"blocks.{l}.attn.hook_pattern", partial(_keep, layer=l, store=before), writes=False)
                        for l in range(lm.n_layers)]
        stack = [find, *hooks_before, var, *hooks_after]
    result = sl.NnsightRunner(lm).generate(inputs, stack, max_new_tokens=max_new_tokens)
    ctx = result.ctx
    return OracleRun(
        tokens=list(result.tokens[0]), steps=after, before=before,
        phi={l: ctx.phi[l][0].float().cpu() for l in ctx.phi}, sinks={l: ctx.sinks[l][0].cpu() for l in ctx.sinks},
        prompt_length=ctx.prompt_length,
    )


def expected_queries(spans, attention_mask, prompt_length, n_generated, max_new_tokens):
    """Text prompt positions from the first image on, then each generated token that was fed back."""
    region = spans.region[0] if spans.region is not None else spans.mask[0]
    first = int(region.nonzero()[0])
    prompt = [p for p in range(first, prompt_length) if not region[p] and attention_mask[0, p]]
    return prompt + [prompt_length + k for k in range(min(n_generated, max_new_tokens - 1))]
