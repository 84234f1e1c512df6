"""Stack: compose interventions, and a user's own functions, in one object.

A stack's members are interventions (anything with `hooks(ctx)`), `Hook`s,
`(hook name, fn)` pairs, or other stacks. Each member declares the hook points
it reads and writes through the `Hook`s it returns (`Hook.writes`); the stack
runs them in the order a forward pass reaches the points (layer, then stage:
resid_pre < v < attn_scores < pattern < z < attn_out < resid_mid < resid_post,
then hook_logits) and, at one point, in list order. So `Stack(VAR(), PAI())`
and `Stack(PAI(), VAR())` run the same (PAI acts on the scores before the
softmax, VAR on the pattern after it), while two members at the same point
run in the order they are listed::

    import sinklens as sl

    def damp_bos(pattern, ctx):                        # a user's function, any hook name
        pattern[..., 0] *= 0.5
        return pattern

    stack = sl.Stack(
        sl.FindSinks(), sl.PAI(alpha=0.5), sl.VAR(),
        ("blocks.3.attn.hook_pattern", damp_bos),       # after VAR at layer 3: listed after it
    )
    sl.NnsightRunner(lm).generate(inputs, stack)       # or sl.TransformerLensRunner(lm)
    print(stack.describe(ctx))                         # the run order, with reads and writes

A Stack is accepted wherever a list of interventions is, and a list wherever a
Stack is. A stack takes each intervention at most once per hook point (two
VAR, two FindSinks or two VCD acting at one point are refused, naming them;
give them disjoint layers or merge them); a user's own functions compose
freely, in list order. `Edit(names, fn)` is the same as a pair, for several names at once or
a read-only function (`writes=False`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

from torch import Tensor

from sinklens.errors import StackError
from sinklens.hook_points import parse
from sinklens.run import Hook, HookFn, Intervention, Member, Plan, RunContext, expand_inputs, ordered_hooks, plan


class Stack:
    """Interventions and functions run as one: (layer, stage) order, then list order."""

    repeatable: ClassVar[bool] = True  # its hooks keep their members' labels (see sinklens.run.hooks_of)

    def __init__(self, *members: Member) -> None:
        for member in members:
            _check_member(member)
        self.members: tuple[Member, ...] = members

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"Stack({', '.join(_label(member) for member in self.members)})"

    def hooks(self, ctx: RunContext) -> list[Hook]:
        """Every member's hooks in run order."""
        return ordered_hooks(self.members, ctx)

    def plan(self, ctx: RunContext) -> Plan:
        """What runs where: the hooks in run order, grouped by hook point (`sinklens.run.plan`)."""
        return plan(self.members, ctx)

    def describe(self, ctx: RunContext) -> str:
        """The plan as a table, one line per hook: point, reads/writes, member (or the user's function)."""
        lines = []
        for point in self.plan(ctx):
            for hook in point.hooks:
                access = ("reads, writes" if hook.writes else "reads") + (" + weights" if hook.weights else "")
                when = "  (prefill only)" if hook.prefill_only else ""
                lines.append(f"{hook.name:<32} {access:<15} {hook.member or _function_name(hook.fn)}{when}")
        return "\n".join(lines)

    def expand_inputs(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The model inputs for a run of this stack (see `sinklens.run.expand_inputs`)."""
        return expand_inputs(self.members, inputs)


@dataclass(frozen=True)
class Edit:
    """A user's function `fn(tensor, ctx) -> tensor | None` on one or more hook names.

    `Edit("blocks.2.hook_resid_post", fn)` is the same member as the pair
    `("blocks.2.hook_resid_post", fn)`; `writes=False` declares a function that
    only reads (returning a tensor from it is then an error); `prefix_safe=True`
    declares that what it does to a prompt's image prefix depends on that prefix
    alone (see `sinklens.Hook`), so that runs may share the prefix.
    """

    names: str | Sequence[str]
    fn: HookFn
    writes: bool = True
    prefix_safe: bool = False
    repeatable: ClassVar[bool] = True  # a user's function: several compose, in list order

    def __post_init__(self) -> None:
        for name in self._names():
            parse(name)  # an unknown name fails here, listing the valid points
        if not callable(self.fn):
            raise StackError(f"Edit needs a function fn(tensor, ctx) -> tensor | None, got {type(self.fn).__name__}")

    def _names(self) -> tuple[str, ...]:
        return (self.names,) if isinstance(self.names, str) else tuple(self.names)

    def hooks(self, ctx: RunContext) -> list[Hook]:
        return [Hook(name, self.fn, writes=self.writes, prefix_safe=self.prefix_safe) for name in self._names()]


def _is_pair(member: tuple) -> bool:
    return len(member) == 2 and isinstance(member[0], str) and callable(member[1])


def _check_member(member: Any) -> None:
    if isinstance(member, (Hook, Intervention)):
        return
    if isinstance(member, tuple) and _is_pair(member):
        parse(member[0])
        return
    if isinstance(member, (list, tuple)):
        for inner in member:
            _check_member(inner)
        return
    raise StackError(
        f"a stack member must be an intervention (an object with hooks(ctx)), a sinklens.Hook or a "
        f"(hook name, fn) pair; got {type(member).__name__} {member!r}"
    )


def _label(member: Any) -> str:
    if isinstance(member, tuple) and _is_pair(member):
        return f"({member[0]!r}, {_function_name(member[1])})"
    if isinstance(member, Hook):
        return f"Hook({member.name!r}, {_function_name(member.fn)})"
    if isinstance(member, Edit):
        return f"Edit({member.names!r}, {_function_name(member.fn)})"
    return repr(member)


def _function_name(fn: Callable[..., Any]) -> str:
    while isinstance(fn, partial):
        fn = fn.func
    return getattr(fn, "__qualname__", repr(fn))
