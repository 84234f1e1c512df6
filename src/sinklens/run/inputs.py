"""The inputs of a run: the model inputs a stack needs, and the run's context.

`begin(loaded, inputs, members)` is where every run starts: the one member that
runs extra passes (VCD appends a noised copy of every prompt: rows `[B, 2B)`)
expands the inputs and declares which rows each pass holds, and `make_context`
checks the image tokens against the images and computes the `RunSpec` once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from sinklens.errors import StackError
from sinklens.run.context import RunContext, RunSpec
from sinklens.run.hooks import Hook, Members, is_pair

if TYPE_CHECKING:
    from sinklens.models.loaded import LoadedModel


@runtime_checkable
class MultiPass(Protocol):
    """A member that runs extra passes in the same batch (VCD): it expands the inputs and names each pass's rows."""

    def expand_inputs(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]: ...

    def passes(self, n_rows: int) -> dict[str, slice]: ...


def _leaves(members: Any) -> Iterator[Any]:
    """Every leaf member of a stack, through lists, tuples, Stacks and wrappers that hold `members`."""
    if isinstance(members, Hook) or is_pair(members):
        return
    if isinstance(members, (list, tuple)) or hasattr(members, "members"):
        for member in members if isinstance(members, (list, tuple)) else members.members:
            yield from _leaves(member)
        return
    yield members


def multi_pass(members: Members | Any) -> MultiPass | None:
    """The one member of a stack that runs extra passes, if any (two are refused)."""
    found = [member for member in _leaves(members) if isinstance(member, MultiPass)]
    if len(found) > 1:
        raise StackError(
            f"{len(found)} members run extra passes ({', '.join(map(repr, found))}); a stack "
            "holds at most one (one VCD), since each would double the batch its own way"
        )
    return found[0] if found else None


def expand_inputs(members: Members | Any, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Model inputs for a stack: unchanged, or as the one member that runs extra passes makes them.

    VCD runs its noised-image pass in the same batch as the image pass: it
    returns the inputs with a noised copy of every prompt appended. Runners call
    this; call it yourself before your own trace or bridge run of such a stack,
    and give the stack to `make_context` too.
    """
    member = multi_pass(members)
    return dict(inputs) if member is None else member.expand_inputs(inputs)


def make_context(loaded: LoadedModel, inputs: Mapping[str, Tensor], members: Members | Any = ()) -> RunContext:
    """The run context of one prompt batch: image spans (checked against the images), padding, model facts.

    With the stack (`members`), the rows of each pass of a member that runs
    several (VCD) are named in the spec: give it for a stack with VCD.
    """
    spans = loaded.check_inputs(inputs)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(inputs["input_ids"])
    member = multi_pass(members)
    passes = member.passes(int(inputs["input_ids"].shape[0])) if member is not None else {}
    spec = RunSpec.of(spans, attention_mask, n_layers=loaded.n_layers, sink_dims=loaded.sink_dims,
                      d_model=loaded.d_model, default_tau=loaded.default_tau, model_name=loaded.name,
                      passes=passes, n_vision_layers=loaded.n_vision_layers,
                      tower_type=loaded.catalogue.tower_type)  # fmt: skip
    return RunContext(spec)


@dataclass(frozen=True)
class RunInputs:
    """What a runner feeds the model for a stack, how many rows are the user's prompts, and the run's context."""

    inputs: dict[str, Tensor]
    n_prompts: int
    ctx: RunContext


def begin(loaded: LoadedModel, inputs: Mapping[str, Tensor], members: Members | Any) -> RunInputs:
    """The inputs of a run (extra passes expanded) and its context, whose spec is computed here once."""
    expanded = expand_inputs(members, inputs)
    return RunInputs(expanded, inputs["input_ids"].shape[0], make_context(loaded, expanded, members))
