"""The plan of a run: a stack's hooks grouped by hook point, and how one point's functions are applied.

`plan(members, ctx)` is what a backend walks; at each point it reads the
tensor, calls `apply_point` with that point's hooks, and writes back what it
returns (None: nothing changed). `apply_point` holds the hook contract: a
read-only hook returns nothing, a write keeps the shape and holds no NaN or
infinity (-inf only as a mask, at `attn.hook_attn_scores` and `hook_logits`).

>>> import torch
>>> from sinklens.models.spans import ImageSpans
>>> from sinklens.run.context import RunContext, RunSpec
>>> image = torch.tensor([[False, True, True, False, False]])
>>> ctx = RunContext(RunSpec.of(ImageSpans(mask=image), torch.ones(1, 5, dtype=torch.bool), n_layers=2))
>>> double = Hook("blocks.1.hook_resid_pre", lambda resid, ctx: resid * 2)
>>> [(point.name, len(point.hooks)) for point in plan([double], ctx)]
[('blocks.1.hook_resid_pre', 1)]
>>> apply_point(plan([double], ctx)[0].hooks, torch.ones(1, 5, 3), ctx).sum().item()
30.0
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sinklens.errors import HookContractError, NonFiniteError
from sinklens.hook_points import HookPoint, parse
from sinklens.run.hooks import Hook, Member, Members, ModuleWeights, describe_hook, ordered_hooks

if TYPE_CHECKING:
    from sinklens.run.context import RunContext


@dataclass(frozen=True)
class PlanPoint:
    """One hook point of a run and the hooks applied there, in order."""

    name: str
    hooks: tuple[Hook, ...]

    @property
    def point(self) -> HookPoint:
        return parse(self.name)

    @property
    def prefill_only(self) -> bool:
        """Whether every hook here is prefill-only (the point is then not even read while decoding); the vision
        tower's points are, whatever their hooks say: the tower runs in the prefill only."""
        return self.point.in_vision or all(hook.prefill_only for hook in self.hooks)

    @property
    def wants_weights(self) -> bool:
        """Whether a hook here needs the weights of the module the point feeds (read only then)."""
        return any(hook.weights for hook in self.hooks)


Plan = tuple[PlanPoint, ...]


def plan(members: Members | Member, ctx: RunContext) -> Plan:
    """The plan of a stack for one run: its hooks in run order, grouped by hook point."""
    points: list[PlanPoint] = []
    for name, group in itertools.groupby(ordered_hooks(members, ctx), key=lambda hook: hook.name):
        points.append(PlanPoint(name, tuple(group)))
    return tuple(points)


# -inf means "masked" before a softmax or a choice; anywhere else a non-finite value is a bug
_NEG_INF_ALLOWED = ("attn.hook_attn_scores", "hook_logits")


def _shape_ok(result: Tensor, value: Tensor, hook: Hook) -> bool:
    """The same shape, or, for a resizing hook at a vision point, the same shape but for the token count."""
    if result.shape == value.shape:
        return True
    resizable = hook.resizes and hook.point.in_vision and result.dim() == value.dim() >= 2
    return resizable and result.shape[0] == value.shape[0] and result.shape[2:] == value.shape[2:]


def apply_point(
    hooks: Sequence[Hook], value: Tensor, ctx: RunContext, weights: ModuleWeights | None = None
) -> Tensor | None:
    """Apply the functions of one hook point in order; the new tensor, or None if none returned one.

    Skips `prefill_only` hooks while decoding, and refuses a tensor from a
    read-only hook, one whose shape differs from what the point holds, and one
    holding NaN or infinity (`NonFiniteError`, naming the hook; -inf is a mask
    at `attn.hook_attn_scores` and `hook_logits`, so it passes there).
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
                    f"{describe_hook(hook)} asks for the weights of the module this point feeds "
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
                f"{describe_hook(hook)} is declared read-only (writes=False) but returned a "
                f"{type(result).__name__}; return None, or declare Hook(..., writes=True)"
            )
        if not isinstance(result, Tensor) or not _shape_ok(result, value, hook):
            got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise HookContractError(
                f"{describe_hook(hook)} returned {got}, but the point holds a tensor of shape "
                f"{tuple(value.shape)}; return a tensor of the same shape, or None to leave it unchanged"
            )
        _check_finite(result, hook)
        value, changed = result, True
    return value if changed else None


def _check_finite(value: Tensor, hook: Hook) -> None:
    if not value.is_floating_point() or value.numel() == 0 or value.device.type == "meta":
        return
    low, high = torch.aminmax(value.detach())  # one pass; both propagate NaN
    masked_ok = hook.point.kind in _NEG_INF_ALLOWED
    if bool(torch.isfinite(high)) and (masked_ok or bool(torch.isfinite(low))):
        return
    found = "NaN" if bool(torch.isnan(high)) else "inf" if not bool(torch.isfinite(high)) else "-inf"
    raise NonFiniteError(
        f"{describe_hook(hook)} wrote {found} values; sinklens refuses non-finite values at every hook point "
        f"(-inf only as a mask, at {' and '.join(_NEG_INF_ALLOWED)}). Check the function for a division by "
        "zero or a log of zero, or return None to leave the tensor unchanged."
    )


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
