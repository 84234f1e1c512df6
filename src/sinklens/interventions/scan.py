"""SinkDimensionScan: the hidden-state profile |x_d| / RMS(x) per layer and token (SPEC section 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar
from functools import partial

from torch import Tensor

# ops by name, not the package: a hook function shipped to NDIF carries only what it calls
from sinklens.ops import dimension_magnitudes
from sinklens.hook_points import block
from sinklens.run import Hook, RunContext, resolve_layers


@dataclass(frozen=True, kw_only=True)
class SinkDimensionScan:
    """Record |x_d| / RMS(x) at `blocks.{l}.hook_resid_pre` on the prompt (prefill only).

    Fills `ctx.records["scan"]`: a dict layer -> fp32 tensor `[batch, pos, d_model]`
    on the CPU (or only the dimensions in `dims`, `[batch, pos, len(dims)]`, to keep
    memory small on wide models). Reads only; composes with anything.
    """

    # shared image prefixes (sinklens.run.prefixes): per token: a prefix row's magnitudes depend on the prefix
    # alone
    prefix_safe: ClassVar[bool] = True

    layers: Sequence[int] | None = None
    dims: Sequence[int] | None = None

    def hooks(self, ctx: RunContext) -> list[Hook]:
        layers = resolve_layers(self.layers, ctx.n_layers, range(ctx.n_layers))
        dims = tuple(self.dims) if self.dims is not None else None
        return [Hook(block(layer, "hook_resid_pre"), partial(_scan, layer=layer, dims=dims), prefill_only=True,
                     writes=False)
                for layer in layers]  # fmt: skip


def _scan(resid: Tensor, ctx: RunContext, *, layer: int, dims: tuple[int, ...] | None) -> None:
    magnitudes = dimension_magnitudes(resid)
    if dims is not None:
        magnitudes = magnitudes[..., list(dims)]
    ctx.found.add("scan", magnitudes.detach().cpu(), layer=layer, positions_from=ctx.held_from)
