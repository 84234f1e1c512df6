"""What a run returns: the result types, the recorder of each step's logits, and the end of a generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sinklens.run.context import RunContext
from sinklens.run.hooks import Hook
from sinklens.run.inputs import RunInputs
from sinklens.run.prefixes import Sharing

if TYPE_CHECKING:
    from sinklens.models.loaded import LoadedModel


@dataclass(frozen=True)
class ForwardResult:
    logits: Tensor  # [batch, pos, vocab], the user's prompts only
    ctx: RunContext  # over every row the model ran (2 x batch under VCD)


@dataclass(frozen=True)
class CacheResult:
    """A forward pass with the stack applied and the activations at the named hook points."""

    logits: Tensor
    ctx: RunContext
    cache: dict[str, Tensor]  # hook name -> tensor in sinklens' layout (sinklens.hook_points), every row


@dataclass(frozen=True)
class GenerationResult:
    """Greedy generation: tokens up to (not including) the first EOS of each example."""

    tokens: list[list[int]]
    step_logits: Tensor  # [batch, step, vocab], the logits each step chose from (before EOS suppression)
    texts: list[str]
    ctx: RunContext
    sharing: Sharing | None = None  # with a PrefixStore: whether image prefixes were shared, and how (or why not)


@dataclass(frozen=True)
class Recorder:
    """Keeps the last-position logits of every step (a member that only reads; put it last)."""

    store: list[Tensor] = field(default_factory=list)
    repeatable = True  # the runner's own reader, not a user's member

    def hooks(self, ctx: RunContext) -> list[Hook]:
        return [Hook("hook_logits", partial(_keep_last_logits, store=self.store), writes=False, prefix_safe=True)]


def _keep_last_logits(logits: Tensor, ctx: RunContext, *, store: list[Tensor]) -> None:
    store.append(logits[:, -1].detach().clone())


def finish_generation(loaded: LoadedModel, run: RunInputs, store: Sequence[Tensor]) -> GenerationResult:
    """Tokens and texts from the recorded step logits, for the user's prompts."""
    step_logits = torch.stack(list(store), dim=1)[: run.n_prompts]
    eos = loaded.tokenizer.eos_token_id
    # EOS is suppressed while choosing (min_new_tokens); the raw argmax says where greedy decoding stops
    tokens = []
    for row in step_logits.argmax(-1).tolist():
        tokens.append(row[: row.index(eos)] if eos in row else row)
    texts = [loaded.decode(torch.tensor(row, dtype=torch.long)) for row in tokens]
    return GenerationResult(tokens=tokens, step_logits=step_logits, texts=texts, ctx=run.ctx)
