"""What every intervention shares: hooks, the run context, and the order they run in.

An intervention is an object with `hooks(ctx) -> list[Hook]`. A `Hook` names one
TransformerLens-style hook point and a function `fn(tensor, ctx) -> tensor | None`
(return None to leave the tensor as it is) and says whether it may write there.
A stack is a list of members (interventions, `Hook`s or `(hook name, fn)` pairs,
or a `sinklens.Stack` of them); its hooks run in (layer, stage) order and, at
one point, in list order. Backends attach the hooks for one run and remove them
when it ends; both apply the functions of one point with `apply_point`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from sinklens.errors import HookContractError, StackError
from sinklens.hook_points import HookPoint, parse
from sinklens.models.spans import ImageSpans
from sinklens.ops._typing import Bool

HookFn = Callable[[Tensor, "RunContext"], Tensor | None]
ModuleWeights = tuple[Tensor, Tensor | None]  # (weight, bias) of the module a hook point feeds; bias may be None


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
    """

    name: str
    fn: HookFn
    prefill_only: bool = False
    writes: bool = True
    weights: bool = False

    @property
    def point(self) -> HookPoint:
        return parse(self.name)


@runtime_checkable
class Intervention(Protocol):
    """Anything that returns hooks for a run."""

    def hooks(self, ctx: RunContext) -> list[Hook]: ...


@dataclass
class RunContext:
    """What the interventions of one run share.

    `step` is 0 during prefill and k during the k-th decoding step. Key masks
    are over the prompt's positions; `keys` pads them to the current key length
    (tokens generated later are never image tokens or sinks: sink sets are found
    on the prompt and reused while decoding).
    """

    image: ImageSpans
    attention_mask: Bool[Tensor, "batch pos"]
    n_layers: int
    sink_dims: tuple[int, ...] | None = None
    d_model: int | None = None
    default_tau: float | None = None  # the model's default sink threshold (absolute), if it has one
    model_name: str | None = None
    step: int = 0
    sinks: dict[int, Tensor] = field(default_factory=dict)
    phi: dict[int, Tensor] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    # batch rows of each pass when a member runs several passes per step (VCD: "image", "noised")
    passes: dict[str, slice] = field(default_factory=dict)

    @property
    def prompt_length(self) -> int:
        return self.image.mask.shape[-1]

    @property
    def prefill(self) -> bool:
        return self.step == 0

    def keys(
        self, mask: Bool[Tensor, "batch pos"], key_length: int, device: torch.device | None = None
    ) -> Bool[Tensor, "batch key"]:
        """A prompt-position mask padded with False up to `key_length` keys (on `device` if given).

        Under a device map each layer's tensors live on that layer's device;
        the masks are made on the inputs' device and moved where they are used.
        """
        mask = mask.to(device) if device is not None else mask
        extra = key_length - mask.shape[-1]
        return torch.nn.functional.pad(mask, (0, extra)) if extra > 0 else mask[:, :key_length]

    def text_queries(self, query_length: int, device: torch.device | None = None) -> Bool[Tensor, "batch query"]:
        """Queries VAR acts on: each prompt's text after its last image (prefill), every new token (decoding)."""
        device = device or self.image.mask.device
        if not self.prefill:
            return torch.ones(self.image.mask.shape[0], query_length, dtype=torch.bool, device=device)
        positions = torch.arange(query_length, device=device)
        after_image = positions[None, :] >= self.image.text_start.to(device)[:, None]
        return after_image & self.attention_mask[:, :query_length].to(device).bool()

    def record(self, key: str, value: Any) -> None:
        """Append a value to a named list of records (one entry per hook call)."""
        self.records.setdefault(key, []).append(value)

    def state(self) -> dict[str, Any]:
        """What the interventions found, as plain data: sinks, phi and records by name.

        A remote run sends this back from the server (as torch-saved plain data,
        so records must hold tensors, numbers, strings and containers of them);
        `update` folds it into the client's context.
        """
        return {"sinks": dict(self.sinks), "phi": dict(self.phi), "records": dict(self.records)}

    def update(self, state: dict[str, Any]) -> None:
        """Take in what `state()` returned (from a remote run, or from this context itself)."""
        self.sinks.update(state["sinks"])
        self.phi.update(state["phi"])
        self.records.update(state["records"])


Member = Any  # an Intervention, a Hook, a (hook name, fn) pair, or an iterable of members (a Stack)
Members = Iterable[Member]  # what runners and backends take: a list, a tuple or a Stack of members


def hooks_of(member: Member, ctx: RunContext) -> list[Hook]:
    """The hooks of one stack member, in its own order."""
    if isinstance(member, Hook):
        return [member]
    if isinstance(member, tuple) and len(member) == 2 and isinstance(member[0], str) and callable(member[1]):
        return [Hook(member[0], member[1])]
    if isinstance(member, Intervention):
        hooks = member.hooks(ctx)
        bad = [hook for hook in hooks if not isinstance(hook, Hook)]
        if bad:
            raise StackError(
                f"{type(member).__name__}.hooks(ctx) returned {type(bad[0]).__name__} {bad[0]!r}; it must "
                "return a list of sinklens.Hook(name, fn)"
            )
        return hooks
    if isinstance(member, (list, tuple)):
        return [hook for inner in member for hook in hooks_of(inner, ctx)]
    raise StackError(
        f"a stack member must be an intervention (an object with hooks(ctx)), a sinklens.Hook or a "
        f"(hook name, fn) pair; got {type(member).__name__} {member!r}"
    )


def ordered_hooks(interventions: Members | Member, ctx: RunContext) -> list[Hook]:
    """Every hook of a stack in run order: (layer, stage), then list order (stable sort)."""
    if isinstance(interventions, Hook) or not isinstance(interventions, Iterable):
        interventions = [interventions]  # one member given on its own
    hooks = [hook for member in interventions for hook in hooks_of(member, ctx)]
    for hook in hooks:
        point = hook.point
        if point.in_block and not 0 <= point.layer < ctx.n_layers:
            raise ValueError(f"hook {hook.name!r} names layer {point.layer}; the model has layers 0..{ctx.n_layers - 1}")
    return sorted(hooks, key=lambda hook: (hook.point.layer, hook.point.stage))


def apply_point(
    hooks: Sequence[Hook], value: Tensor, ctx: RunContext, weights: ModuleWeights | None = None
) -> Tensor | None:
    """Apply the functions of one hook point in order; the new tensor, or None if none returned one.

    Skips `prefill_only` hooks while decoding, and refuses a tensor from a
    read-only hook or one whose shape differs from what the point holds.
    `weights` are the (weight, bias) of the module the point feeds, which the
    backend reads (`module_weights`) when a hook asks for them.
    """
    changed = False
    for hook in hooks:
        if hook.prefill_only and not ctx.prefill:
            continue
        if hook.weights:
            if weights is None:
                raise HookContractError(
                    f"{_describe(hook)} at {hook.name!r} asks for the weights of the module this point feeds "
                    "(Hook(weights=True)), but the backend gave none: run it through NnsightRunner or "
                    "TransformerLensRunner (transformer_lens_hooks needs bridge=)"
                )
            result = hook.fn(value, ctx, weight=weights[0], bias=weights[1])
        else:
            result = hook.fn(value, ctx)
        if result is None:
            continue
        if not hook.writes:
            raise HookContractError(
                f"{_describe(hook)} at {hook.name!r} is declared read-only (writes=False) but returned a "
                f"{type(result).__name__}; return None, or declare Hook(..., writes=True)"
            )
        if not isinstance(result, Tensor) or result.shape != value.shape:
            got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise HookContractError(
                f"{_describe(hook)} at {hook.name!r} returned {got}, but the point holds a tensor of shape "
                f"{tuple(value.shape)}; return a tensor of the same shape, or None to leave it unchanged"
            )
        value, changed = result, True
    return value if changed else None


def wants_weights(hooks: Sequence[Hook]) -> bool:
    """Whether any hook of a point needs the weights of the module it feeds (the backend reads them only then)."""
    return any(hook.weights for hook in hooks)


def module_weights(module: Any, where: str) -> ModuleWeights:
    """(weight, bias) of the module whose input a hook point is: an nnsight envoy or a bridge component.

    Called next to the model (on the server in a remote run); `where` names
    the point for the error.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        raise HookContractError(
            f"a hook at {where} asks for the weights of the module this point feeds (Hook(weights=True)), "
            "but that is no module with a weight; ask for them at the input of one, such as "
            "blocks.{layer}.attn.hook_z (the attention's output projection)"
        )
    bias = getattr(module, "bias", None)
    return weight.detach(), bias.detach() if isinstance(bias, Tensor) else None


def _describe(hook: Hook) -> str:
    fn = hook.fn.func if isinstance(hook.fn, partial) else hook.fn
    return f"hook function {getattr(fn, '__qualname__', repr(fn))}"


def resolve_layers(layers: Sequence[int] | None, n_layers: int, default: range) -> tuple[int, ...]:
    """Explicit layers checked against the model, or the default range clipped to it."""
    if layers is None:
        return tuple(layer for layer in default if 0 <= layer < n_layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist; the model has layers 0..{n_layers - 1}")
    return tuple(layers)
