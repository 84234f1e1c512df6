"""FindSinks: sink tokens per layer from the residual stream (SPEC section 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from sinklens import ops
from sinklens.errors import SinkDimensionError
from sinklens.hook_points import block
from sinklens.interventions import params
from sinklens.interventions.base import Hook, RunContext, resolve_layers


@dataclass(frozen=True, kw_only=True)
class FindSinks:
    """Mark tokens with phi(x) >= tau at `blocks.{l}.hook_resid_pre`, once, on the prompt.

    Writes `ctx.phi[l]` (fp32, `[batch, pos]`) and `ctx.sinks[l]` (bool), which
    VAR and the analysis interventions read. `dims` defaults to the model's
    known sink dimensions. The released convention compares strictly (`phi > tau`).
    """

    dims: Sequence[int] | None = None
    tau: float = 20.0
    layers: Sequence[int] | None = None
    convention: params.Convention = "paper"

    def __post_init__(self) -> None:
        params.positive("tau", self.tau)
        params.convention(self.convention)
        if self.dims is not None and len(self.dims) == 0:
            raise SinkDimensionError(
                "dims is empty; give at least one sink dimension, or leave dims=None to use the model's known ones"
            )

    def hooks(self, ctx: RunContext) -> list[Hook]:
        dims = tuple(self.dims) if self.dims is not None else ctx.sink_dims
        if not dims:
            raise SinkDimensionError(
                "no sink dimensions are known for this model. Pass FindSinks(dims=[...]) or discover them "
                "with `sinklens discover-sink-dims --model NAME` (sinklens.ops.discover_sink_dims)."
            )
        fn = partial(_find_sinks, dims=dims, tau=self.tau, strict=self.convention == "released")
        layers = resolve_layers(self.layers, ctx.n_layers, range(ctx.n_layers))
        return [
            Hook(block(layer, "hook_resid_pre"), partial(fn, layer=layer), prefill_only=True, writes=False)
            for layer in layers
        ]


def _find_sinks(resid: Tensor, ctx: RunContext, *, layer: int, dims: tuple[int, ...], tau: float, strict: bool) -> None:
    phi = ops.sink_dimension_value(resid, dims)
    ctx.phi[layer] = phi
    # padding is never a sink
    ctx.sinks[layer] = ops.sink_mask(phi, tau, strict=strict) & ctx.attention_mask.bool()
