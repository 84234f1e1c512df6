"""What both backends share: the run context of a prompt batch, results, and the logits recorder.

No nnsight or TransformerLens here: a runner expands the inputs for its stack
(`expand_inputs`), makes the context, runs the stack with `Recorder` last at
`hook_logits`, and turns what it recorded into a `GenerationResult` for the
prompts the user gave (the first `n_prompts` rows when VCD doubled the batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from sinklens.interventions.base import Hook, RunContext
from sinklens.interventions.stack import expand_inputs
from sinklens.models.loading import LoadedModel


def make_context(loaded: LoadedModel, inputs: Mapping[str, Tensor]) -> RunContext:
    """The run context of one prompt batch: image spans, padding, sink dimensions."""
    spans = loaded.check_inputs(inputs)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(inputs["input_ids"])
    return RunContext(
        image=spans,
        attention_mask=attention_mask.bool(),
        n_layers=loaded.n_layers,
        sink_dims=loaded.sink_dims,
        d_model=loaded.d_model,
        default_tau=loaded.default_tau,
        model_name=loaded.name,
    )


@dataclass(frozen=True)
class Prepared:
    """The inputs a runner feeds the model for a stack, and how many of their rows are the user's prompts."""

    inputs: dict[str, Tensor]
    n_prompts: int
    ctx: RunContext


def prepare(loaded: LoadedModel, inputs: Mapping[str, Tensor], interventions: Any) -> Prepared:
    expanded = expand_inputs(interventions, inputs)
    return Prepared(expanded, inputs["input_ids"].shape[0], make_context(loaded, expanded))


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


@dataclass(frozen=True)
class Recorder:
    """Keeps the last-position logits of every step (a member that only reads; put it last)."""

    store: list[Tensor] = field(default_factory=list)

    def hooks(self, ctx: RunContext) -> list[Hook]:
        return [Hook("hook_logits", partial(_keep_last_logits, store=self.store), writes=False)]


def _keep_last_logits(logits: Tensor, ctx: RunContext, *, store: list[Tensor]) -> None:
    store.append(logits[:, -1].detach().clone())


def finish_generation(loaded: LoadedModel, prepared: Prepared, recorder: Recorder) -> GenerationResult:
    """Tokens and texts from the recorded step logits, for the user's prompts."""
    step_logits = torch.stack(recorder.store, dim=1)[: prepared.n_prompts]
    eos = loaded.tokenizer.eos_token_id
    # EOS is suppressed while choosing (min_new_tokens); the raw argmax says where greedy decoding stops
    tokens = []
    for row in step_logits.argmax(-1).tolist():
        tokens.append(row[: row.index(eos)] if eos in row else row)
    texts = [loaded.decode(torch.tensor(row, dtype=torch.long)) for row in tokens]
    return GenerationResult(tokens=tokens, step_logits=step_logits, texts=texts, ctx=prepared.ctx)
