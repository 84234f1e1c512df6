"""Sink dimensions of known checkpoints, each with where the number comes from.

`discover` (sinklens.ops.discovery) is how to fill this table for a new model.
"""

from __future__ import annotations

from dataclasses import dataclass

from sinklens.models.tiny import TINY_SINK_DIM


@dataclass(frozen=True)
class SinkDims:
    """Known sink dimensions; `tau` is the model's default sink threshold when it is not the paper's 20."""

    dims: tuple[int, ...]
    source: str
    tau: float | None = None
    tau_reason: str | None = None


KNOWN: dict[str, SinkDims] = {
    "tiny-llava": SinkDims((TINY_SINK_DIM,), "planted by construction (sinklens.models.tiny.plant_sinks)"),
    "llava-hf/llava-1.5-7b-hf": SinkDims((1415, 2533), "cited: LLaMA-2-7B massive activations (Sun et al. 2024; Kang et al. 2025)"),
    "llava-hf/llava-1.5-13b-hf": SinkDims((2100, 4743), "cited: LLaMA-2-13B massive activations (Sun et al. 2024; Kang et al. 2025)"),
}


def known_sink_dims(name: str) -> SinkDims | None:
    """The registry entry for a model name or hub id, if any."""
    return KNOWN.get(name)
