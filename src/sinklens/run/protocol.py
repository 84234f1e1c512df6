"""`Runner`: what eval/, the studies and the CLI need from a backend's runner.

`NnsightRunner` and `TransformerLensRunner` both satisfy it; so does any object
with a `loaded` model and these two calls (`prefixes`, a `PrefixStore`, asks
`generate` to share image prefixes where it can; `result.sharing` says whether it
did)::

    def accuracy(runner: Runner, inputs, stack) -> str:
        return runner.generate(inputs, stack, max_new_tokens=8).texts[0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor

from sinklens.run.hooks import Members
from sinklens.run.prefixes import PrefixStore
from sinklens.run.results import ForwardResult, GenerationResult

if TYPE_CHECKING:
    from sinklens.models.loaded import LoadedModel


@runtime_checkable
class Runner(Protocol):
    """Runs a stack of interventions on a loaded model: one forward pass, or greedy generation."""

    loaded: LoadedModel

    def forward(self, inputs: Mapping[str, Tensor], interventions: Members = ()) -> ForwardResult: ...

    def generate(
        self, inputs: Mapping[str, Tensor], interventions: Members = (), *, max_new_tokens: int = 16,
        prefixes: PrefixStore | None = None,
    ) -> GenerationResult: ...
