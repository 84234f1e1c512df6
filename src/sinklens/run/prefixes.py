"""Shared image prefixes: compute each distinct image prefix once, and continue every question from its cache.

A benchmark asks several questions about one image (POPE: six). In a causal
model the rows before a question never see it, and every built-in member acts
on a prompt's image prefix from the prefix alone (FindSinks per token; VAR,
PAI, the ablations and the head scores on the text queries after the image), so
the prefix's KV cache and what the stack found on it are the same for every
question. A run with a `PrefixStore`:

1. cuts each prompt into its image prefix and its suffix
   (`sinklens.models.prefixes.split_prompts`);
2. runs the prefixes the store lacks under the stack, once each, and keeps
   their KV cache and their per-position findings (sink sets, phi);
3. continues every question from its prefix's cache, the stack acting on the
   suffix rows (`RunSpec.first_position`), then decodes as usual.

Exactness is declared, not assumed: a stack shares prefixes only when every
hook is `prefix_safe` (`Hook.prefix_safe`, an intervention's class attribute);
otherwise it runs question by question and `GenerationResult.sharing` names
the members that kept it from sharing (`refusal`). A remote run always runs
question by question: the cache would have to stay on the server.

The result of a shared run lays each prompt out as
`[padding | prefix | padding | suffix]` (`result.ctx.attention_mask` marks the
padding): per prompt, its real positions hold what the plain run holds there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sinklens.errors import ParameterError
from sinklens.run.context import PER_LAYER_FINDINGS, Findings
from sinklens.run.hooks import Hook, unsafe_for_prefixes


@dataclass(frozen=True)
class Sharing:
    """How a run went: prefixes shared (how many computed, reused, for how many questions), or why not."""

    shared: bool
    prompts: int = 0  # the rows the model ran (VCD's noised copies included)
    computed: int = 0  # prefixes run in this call
    reused: int = 0  # prompts whose prefix came from the store (computed in an earlier call or shared in this one)
    reason: str = ""  # why a run did not share

    def as_dict(self) -> dict[str, Any]:
        return {"shared": self.shared, "prompts": self.prompts, "computed": self.computed, "reused": self.reused,
                **({"reason": self.reason} if self.reason else {})}  # fmt: skip


def refusal(hooks: Iterable[Hook], *, remote: bool = False, backend: str = "") -> str:
    """Why a run of these hooks cannot share prefixes ("" when it can)."""
    if backend:
        return backend
    if remote:
        return "a remote run shares no prefixes (their cache would have to stay on the server): it runs question by question"
    hooks = list(hooks)
    vision = sorted({hook.name for hook in hooks if hook.point.in_vision})
    if vision:
        return (f"hooks at the vision tower ({', '.join(vision)}) need it to run for every prompt, and a continuation "
                "from a cached prefix does not run it: the run went question by question")  # fmt: skip
    unsafe = unsafe_for_prefixes(hooks)
    if unsafe:
        return (
            f"{', '.join(unsafe)} {'is' if len(unsafe) == 1 else 'are'} not declared prefix-safe, so the run went "
            "question by question (declare a function of your own with Hook(..., prefix_safe=True) when what it does "
            "to a prompt's image prefix depends on that prefix alone)"
        )
    return ""


@dataclass(frozen=True)
class CachedPrefix:
    """One image prefix as a stack left it: its KV cache, its inputs, and what the stack found on its positions."""

    length: int
    kv: tuple[tuple[Tensor, Tensor], ...]  # per layer (keys, values), `[1, kv_head, length, d_head]`
    inputs: dict[str, Tensor]  # the prefix's model inputs (its images' pixels among them, for the spans)
    findings: dict[str, dict[int, Tensor]]  # "sinks", "phi" and positional records: layer -> `[1, length, ...]`


@dataclass
class PrefixStore:
    """Cached prefixes of one stack, the least recently used dropped past `capacity` (never one a batch needs).

    A store belongs to one runner's model and one stack (`stack`: the
    members' exact descriptions): a run with another stack is refused, since
    what a prefix holds depends on the stack that ran over it.
    """

    stack: tuple[str, ...]
    capacity: int = 8
    computed: int = 0
    _entries: OrderedDict[str, CachedPrefix] = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int) or self.capacity < 1:
            raise ParameterError(f"a PrefixStore's capacity must be an integer >= 1, got {self.capacity!r}")

    @classmethod
    def for_stack(cls, members: Iterable[Any], capacity: int = 8) -> PrefixStore:
        return cls(stack=describe(members), capacity=capacity)

    def check(self, members: Iterable[Any]) -> None:
        if describe(members) != self.stack:
            raise ParameterError(
                f"this PrefixStore holds prefixes of the stack {list(self.stack)}; a run of {list(describe(members))} "
                "needs a store of its own (PrefixStore.for_stack(stack))"
            )

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The distinct keys the store lacks, in order."""
        return [key for key in dict.fromkeys(keys) if key not in self._entries]

    def put(self, key: str, prefix: CachedPrefix, keep: Iterable[str] = ()) -> None:
        """Keep `prefix`, dropping the least recently used entries past capacity that are not in `keep`."""
        self._entries[key] = prefix
        self.computed += 1
        self._trim(set(keep) | {key})

    def take(self, keys: Sequence[str]) -> list[CachedPrefix]:
        """The prefixes of `keys`, in order (each marked as just used)."""
        for key in dict.fromkeys(keys):
            self._entries.move_to_end(key)
        return [self._entries[key] for key in keys]

    def _trim(self, keep: set[str]) -> None:
        for key in list(self._entries):
            if len(self._entries) <= self.capacity:
                return
            if key not in keep:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


def describe(members: Iterable[Any]) -> tuple[str, ...]:
    """The exact description of a stack (interventions are frozen dataclasses with exact reprs)."""
    return tuple(repr(member) for member in members)


def prefix_findings(found: Findings, row: int, length: int) -> dict[str, dict[int, Tensor]]:
    """What a prefix pass found on one prompt's positions: its last `length` positions of every positional finding."""
    tables = {name: getattr(found, name) for name in PER_LAYER_FINDINGS}
    tables |= {name: found.records[name] for name in found.positional}
    return {name: {layer: value[row : row + 1, value.shape[1] - length :].detach().clone()
                   for layer, value in table.items()}
            for name, table in tables.items()}  # fmt: skip


def continuation_findings(prefixes: Sequence[CachedPrefix], cached: int) -> Findings:
    """The findings a continuation starts from: each prompt's prefix findings at the positions before `cached`.

    Every prefix is right-aligned at `cached` (the layout of
    `sinklens.models.prefixes.continuation`); the left padding holds zeros
    (False for sink sets), as padding does in a plain run.
    """
    found = Findings()
    names = {name for prefix in prefixes for name in prefix.findings}
    for name in names:
        layers = {layer for prefix in prefixes for layer in prefix.findings.get(name, {})}
        for layer in layers:
            rows = []
            for prefix in prefixes:
                value = prefix.findings[name][layer]
                pad = value.new_zeros((1, cached - value.shape[1], *value.shape[2:]))
                rows.append(torch.cat([pad, value], dim=1))
            found.add(name, torch.cat(rows), layer=layer, positions_from=0)
    return found


def stack_kv(prefixes: Sequence[CachedPrefix], cached: int) -> list[tuple[Tensor, Tensor]]:
    """Per layer, the keys and values of a batch of prefixes, each left-padded with zeros to `cached` positions.

    The padding is masked out by the continuation's attention mask, so its
    zeros never weigh in; every use gets fresh tensors (caches are mutated in
    place by the model).
    """
    layers = []
    for layer in range(len(prefixes[0].kv)):
        keys, values = [], []
        for prefix in prefixes:
            key, value = prefix.kv[layer]
            pad = cached - key.shape[-2]
            keys.append(torch.nn.functional.pad(key, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(value, (0, 0, pad, 0)))
        layers.append((torch.cat(keys), torch.cat(values)))
    return layers


def group_by_length(keys: Sequence[str], lengths: Mapping[str, int]) -> list[list[str]]:
    """Distinct keys grouped by prefix length (each group runs as one batch with no padding), in first-seen order."""
    groups: dict[int, list[str]] = {}
    for key in dict.fromkeys(keys):
        groups.setdefault(lengths[key], []).append(key)
    return list(groups.values())
