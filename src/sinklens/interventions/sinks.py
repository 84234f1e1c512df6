"""FindSinks: sink tokens per layer from the residual stream (SPEC section 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar
from functools import partial

from torch import Tensor

# ops by name, not the package: a hook function shipped to NDIF carries only what it calls
from sinklens.ops import sink_dimension_value, sink_mask
from sinklens.errors import ParameterError, SinkDimensionError
from sinklens.hook_points import block
from sinklens.interventions import params
from sinklens.run import Hook, RunContext, resolve_layers

PAPER_TAU = 20.0


@dataclass(frozen=True, kw_only=True)
class FindSinks:
    """Mark tokens with phi(x) >= tau at `blocks.{l}.hook_resid_pre`, once, on the prompt.

    Writes `ctx.phi[l]` (fp32, `[batch, pos]`) and `ctx.sinks[l]` (bool), which
    VAR and the analysis interventions read. `dims` defaults to the model's
    known sink dimensions. The released convention compares strictly (`phi > tau`).

    The threshold is `tau` (absolute) or `tau_fraction` of phi's ceiling
    sqrt(d_model) (phi <= sqrt(d_model) for any vector, so an absolute tau means
    different things at different widths: the paper's 20 is 0.31 of LLaMA-2-7B's
    ceiling of 64, but 0.83 of SmolLM2-135M's 24). With neither, the model's
    registered default applies (see `sinklens.models.sink_dims`), else tau = 20.
    """

    # shared image prefixes (sinklens.run.prefixes): phi is per token: a prefix row's sinks depend on the prefix
    # alone
    prefix_safe: ClassVar[bool] = True

    dims: Sequence[int] | None = None
    tau: float | None = None
    tau_fraction: float | None = None
    layers: Sequence[int] | None = None
    convention: params.Convention = "paper"

    def __post_init__(self) -> None:
        if self.tau is not None and self.tau_fraction is not None:
            raise ParameterError("give tau (absolute) or tau_fraction (of sqrt(d_model)), not both")
        if self.tau is not None:
            params.positive("tau", self.tau)
        if self.tau_fraction is not None:
            params.positive("tau_fraction", self.tau_fraction)
            if self.tau_fraction >= 1:
                raise ParameterError(
                    f"tau_fraction must be < 1 (phi never exceeds sqrt(d_model)), got {self.tau_fraction}"
                )
        params.convention(self.convention)
        if self.dims is not None and len(self.dims) == 0:
            raise SinkDimensionError(
                "dims is empty; give at least one sink dimension, or leave dims=None to use the model's known ones"
            )

    def hooks(self, ctx: RunContext) -> list[Hook]:
        dims = tuple(self.dims) if self.dims is not None else ctx.sink_dims
        if not dims:
            name = ctx.model_name or "NAME"
            raise SinkDimensionError(
                f"no sink dimensions are known for {ctx.model_name or 'this model'} (it is not in "
                "sinklens.models.sink_dims.KNOWN). Pass FindSinks(dims=[...]) (CLI: --sink-dims) or discover them "
                f"with `sinklens discover-sink-dims --model {name}` (sinklens.ops.discover_sink_dims), "
                "then add the checkpoint to KNOWN with where the numbers come from."
            )
        fn = partial(_find_sinks, dims=dims, tau=self.threshold(ctx.d_model, ctx.default_tau), strict=self.convention == "released")
        layers = resolve_layers(self.layers, ctx.n_layers, range(ctx.n_layers))
        return [
            Hook(block(layer, "hook_resid_pre"), partial(fn, layer=layer), prefill_only=True, writes=False)
            for layer in layers
        ]


    def threshold(self, d_model: int | None, default_tau: float | None = None) -> float:
        """The absolute tau for a model of width `d_model` whose registered default is `default_tau`."""
        if self.tau_fraction is not None:
            if d_model is None:
                raise ParameterError("tau_fraction needs the model width; the run context has no d_model")
            return self.tau_fraction * math.sqrt(d_model)
        tau = self.tau if self.tau is not None else default_tau if default_tau is not None else PAPER_TAU
        if d_model is not None and tau >= math.sqrt(d_model):
            raise ParameterError(
                f"tau = {tau:g} can never be reached: phi is at most sqrt(d_model) = {math.sqrt(d_model):.1f} "
                f"for this model. Use a smaller tau or tau_fraction (the paper's 20 at width 4096 is 0.31)."
            )
        return tau


def _find_sinks(resid: Tensor, ctx: RunContext, *, layer: int, dims: tuple[int, ...], tau: float, strict: bool) -> None:
    phi = sink_dimension_value(resid, dims)
    ctx.found.add("phi", phi, layer=layer, positions_from=ctx.held_from)
    # padding is never a sink
    mask = ctx.attention_mask[:, ctx.held_from : ctx.held_from + phi.shape[1]].to(phi.device)
    ctx.found.add("sinks", sink_mask(phi, tau, strict=strict) & mask, layer=layer, positions_from=ctx.held_from)
