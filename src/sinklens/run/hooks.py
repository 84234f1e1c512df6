"""Hooks: one function on one hook point, the members of a stack that return them, and their run order.

A member of a stack is an intervention (an object with `hooks(ctx)`), a
`Hook`, a `(hook name, fn)` pair, or a list / tuple / Stack of members.
`hooks_of` labels each hook with its member; `ordered_hooks` puts every hook
of a stack in run order and applies the one rule for repeated members.

>>> double = Hook("blocks.1.hook_resid_pre", lambda resid, ctx: resid * 2)
>>> double.point.layer, double.point.kind
(1, 'hook_resid_pre')
>>> resolve_layers(None, 4, range(2, 10))
(2, 3)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

from sinklens.errors import LayerError, StackError
from sinklens.hook_points import HookPoint, parse

if TYPE_CHECKING:
    from sinklens.run.context import RunContext

HookFn = Callable[[Tensor, "RunContext"], Tensor | None]
ModuleWeights = tuple[Tensor, Tensor | None]  # (weight, bias) of the module a hook point feeds; bias may be None

_occurrences = itertools.count()


@dataclass(frozen=True)
class Hook:
    """One function on one hook point.

    `prefill_only` hooks are skipped while decoding. `writes=False` declares a
    hook that only reads (FindSinks, recorders): returning a tensor from it is
    an error, so a stack's declared reads and writes are the ones that happen.
    `weights=True` declares a function that also needs the parameters of the
    module whose input the point is (at `attn.hook_z`: the attention's output
    projection, W_O); it is called `fn(tensor, ctx, weight=..., bias=...)`
    (`bias` None where the module has none). The backend reads them where the
    model runs, on the server in a remote run: an intervention holds no
    weights, and a request carries none.

    `member` names the stack member the hook comes from (for messages; empty
    for a user's own function) and `occurrence` tells that member's place in
    the stack apart from another member of the same kind; `plan` fills both.

    `query_rows=True` declares a function at an attention point that reads and
    writes only `ctx.query_rows(tensor)` (the text queries in prefill, the new
    token while decoding), as every built-in intervention does: the rows route
    then computes only those rows. Without it (a user's function, which may
    read any row) the rows route computes that layer's every row, eager's full
    pattern.

    `prefix_safe=True` declares that what the function does to the rows of a
    prompt's image prefix (the tokens up to its last image token), and what it
    records of them, depends on that prefix alone, never on the question after
    it: a run may then compute each distinct prefix once and continue every
    question from its cache (`sinklens.run.prefixes`). A built-in's hooks take
    the declaration of their intervention (its class attribute `prefix_safe`);
    a user's own function is unsafe unless it says otherwise, and a stack with
    an unsafe hook runs question by question.

    `resizes=True` lets a function at a vision-tower point return a tensor
    with another number of tokens (dimension 1), as test-time registers append
    tokens and drop them before the projector; everywhere else a function
    returns the shape it was given.
    """

    name: str
    fn: HookFn
    prefill_only: bool = False
    writes: bool = True
    weights: bool = False
    query_rows: bool = False
    prefix_safe: bool = False
    resizes: bool = False
    member: str = ""
    occurrence: int | None = field(default=None, compare=False, repr=False)

    @property
    def point(self) -> HookPoint:
        """The parsed hook point (layer, stage) this hook runs at."""
        return parse(self.name)


@runtime_checkable
class Intervention(Protocol):
    """Anything that returns hooks for a run."""

    def hooks(self, ctx: RunContext) -> list[Hook]: ...


Member = Any  # an Intervention, a Hook, a (hook name, fn) pair, or an iterable of members (a Stack)
Members = Iterable[Member]  # what runners and backends take: a list, a tuple or a Stack of members


def is_pair(member: Any) -> bool:
    return isinstance(member, tuple) and len(member) == 2 and isinstance(member[0], str) and callable(member[1])


def hooks_of(member: Member, ctx: RunContext) -> list[Hook]:
    """The hooks of one stack member, in its own order, each labelled with the member it comes from.

    An intervention's hooks get its class name and one occurrence number, unless
    they already carry them (a Stack, or a wrapper such as OnPass, labels its
    own) or the member composes freely (`repeatable = True`: Edit, LogitsHook,
    Stack). A `Hook` or a `(hook name, fn)` pair is a user's function: unlabelled.
    """
    if isinstance(member, Hook):
        return [member]
    if is_pair(member):
        return [Hook(member[0], member[1])]
    if isinstance(member, Intervention):
        hooks = member.hooks(ctx)
        bad = [hook for hook in hooks if not isinstance(hook, Hook)]
        if bad:
            raise StackError(
                f"{type(member).__name__}.hooks(ctx) returned {type(bad[0]).__name__} {bad[0]!r}; it must "
                "return a list of sinklens.Hook(name, fn)"
            )
        if getattr(member, "repeatable", False):
            return hooks
        occurrence = next(_occurrences)
        label, safe = type(member).__name__, bool(getattr(member, "prefix_safe", False))
        return [hook if hook.occurrence is not None
                else replace(hook, member=hook.member or label, occurrence=occurrence, prefix_safe=safe)
                for hook in hooks]  # fmt: skip
    if isinstance(member, (list, tuple)):
        return [hook for inner in member for hook in hooks_of(inner, ctx)]
    raise StackError(
        f"a stack member must be an intervention (an object with hooks(ctx)), a sinklens.Hook or a "
        f"(hook name, fn) pair; got {type(member).__name__} {member!r}"
    )


def ordered_hooks(members: Members | Member, ctx: RunContext) -> list[Hook]:
    """Every hook of a stack in run order: (layer, stage), then list order (stable sort).

    The one rule for repeated members: a stack holds at most one member of
    each kind (its class; OnPass wrappers count per pass) at any hook point.
    Two of one kind at one point (two VAR, two FindSinks, two VCD) would each
    act on the other's output or overwrite what the other found, so they are
    refused; give them disjoint layers, or merge them into one member. A user's
    own functions (pairs, `Hook`, `Edit`, `LogitsHook`) compose freely, in list
    order.
    """
    if isinstance(members, Hook) or is_pair(members) or not isinstance(members, Iterable):
        members = [members]  # one member given on its own
    hooks = [hook for member in members for hook in hooks_of(member, ctx)]
    owners: dict[tuple[str, str], int] = {}
    for hook in hooks:
        point = hook.point
        if point.in_block and not 0 <= point.layer < ctx.n_layers:
            raise LayerError(
                f"hook {hook.name!r} names layer {point.layer}, but the model has layers 0..{ctx.n_layers - 1}; "
                "use a layer in that range"
            )
        if point.in_vision and point.kind.startswith("vision.") and point.kind != "vision.hook_out" \
                and ctx.n_vision_layers and not point.vision_layer < ctx.n_vision_layers:  # fmt: skip
            raise LayerError(
                f"hook {hook.name!r} names vision layer {point.vision_layer}, but the vision tower has layers "
                f"0..{ctx.n_vision_layers - 1}; use a layer in that range"
            )
        if hook.occurrence is None:
            continue
        first = owners.setdefault((hook.member, hook.name), hook.occurrence)
        if first != hook.occurrence:
            raise StackError(
                f"the stack holds two {hook.member} members acting at {hook.name!r}; a stack takes each "
                "intervention at most once per hook point (the second would act on the first's output, or "
                f"overwrite what it found). Merge them into one {hook.member}, or give them disjoint layers."
            )
    return sorted(hooks, key=lambda hook: (hook.point.layer, hook.point.stage))


def unsafe_for_prefixes(hooks: Iterable[Hook]) -> list[str]:
    """Who keeps a stack from sharing image prefixes: every member or user function not declared prefix-safe."""
    names = []
    for hook in hooks:
        if not hook.prefix_safe:
            name = hook.member or f"a user's function {_function_name(hook.fn)} at {hook.name!r}"
            names.append(name)
    return list(dict.fromkeys(names))


def _function_name(fn: Callable[..., Any]) -> str:
    while isinstance(fn, partial):
        fn = fn.func
    return getattr(fn, "__qualname__", repr(fn))


def describe_hook(hook: Hook) -> str:
    """'VAR's hook function _redistribute_pattern at 'blocks.3.attn.hook_pattern'', for messages."""
    owner = f"{hook.member}'s hook function" if hook.member else "hook function"
    return f"{owner} {_function_name(hook.fn)} at {hook.name!r}"


def resolve_layers(layers: Sequence[int] | None, n_layers: int, default: range) -> tuple[int, ...]:
    """Explicit layers checked against the model, or the default range clipped to it."""
    if layers is None:
        return tuple(layer for layer in default if 0 <= layer < n_layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise LayerError(f"layers {bad} do not exist; the model has layers 0..{n_layers - 1}: pass layers in that range")
    return tuple(layers)
