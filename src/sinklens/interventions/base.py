"""What every intervention shares: hooks, the run context, and the order they run in.

An intervention is an object with `hooks(ctx) -> list[Hook]`. A `Hook` names one
TransformerLens-style hook point and a function `fn(tensor, ctx) -> tensor | None`
(return None to leave the tensor as it is). A stack is a list of interventions;
its hooks run in (layer, stage) order and, at one point, in list order. Backends
attach the hooks for one run and remove them when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from sinklens.hook_points import HookPoint, parse
from sinklens.models.spans import ImageSpans
from sinklens.ops._typing import Bool

HookFn = Callable[[Tensor, "RunContext"], Tensor | None]


@dataclass(frozen=True)
class Hook:
    """One function on one hook point. `prefill_only` hooks are skipped while decoding."""

    name: str
    fn: HookFn
    prefill_only: bool = False

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


def ordered_hooks(interventions: Iterable[Intervention], ctx: RunContext) -> list[Hook]:
    """Every hook of a stack in run order: (layer, stage), then list order (stable sort)."""
    hooks = [hook for intervention in interventions for hook in intervention.hooks(ctx)]
    for hook in hooks:
        point = hook.point
        if point.in_block and not 0 <= point.layer < ctx.n_layers:
            raise ValueError(f"hook {hook.name!r} names layer {point.layer}; the model has layers 0..{ctx.n_layers - 1}")
    return sorted(hooks, key=lambda hook: (hook.point.layer, hook.point.stage))


def resolve_layers(layers: Sequence[int] | None, n_layers: int, default: range) -> tuple[int, ...]:
    """Explicit layers checked against the model, or the default range clipped to it."""
    if layers is None:
        return tuple(layer for layer in default if 0 <= layer < n_layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist; the model has layers 0..{n_layers - 1}")
    return tuple(layers)
