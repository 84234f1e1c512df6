"""Sink dimensions of known checkpoints, each with where the number comes from.

Sink dimensions belong to the language model a checkpoint is built on, so an
entry names the checkpoint and says whether the dimensions were measured here
or cited (and from where). For a checkpoint not listed, find them with
`sinklens discover-sink-dims --model NAME` and pass them as
`FindSinks(dims=...)` / `sinklens run --sink-dims ...`, or add an entry here.
The built-ins' entries come from their records (`builtins.py`).

>>> known_sink_dims("llava-hf/llava-1.5-7b-hf").dims
(1415, 2533)
"""

from __future__ import annotations

from dataclasses import dataclass

from sinklens.builtin.records import BUILTIN_MODELS


@dataclass(frozen=True)
class SinkDims:
    """Known sink dimensions; `tau` is the model's default sink threshold when it is not the paper's 20.

    `visual_tau` is, for a model whose image tokens never reach the default, the
    threshold at which a few image tokens stand out as sinks, with the measurement
    that chose it (`visual_tau_reason`); the studies run at it with `--tau visual`.
    """

    dims: tuple[int, ...]
    source: str
    tau: float | None = None
    tau_reason: str | None = None
    visual_tau: float | None = None
    visual_tau_reason: str | None = None


_LLAMA2_7B = "cited: LLaMA-2-7B massive activations (Sun et al. 2024, arXiv 2402.17762; Kang et al. 2025)"
_LLAMA2_13B = "cited: LLaMA-2-13B massive activations (Sun et al. 2024, arXiv 2402.17762; Kang et al. 2025)"
_QWEN2_7B = (
    "cited from a secondary source: Qwen2-7B, the language model of Qwen2-VL-7B (Kang et al. 2025 as "
    "summarised in SPEC.md); not measured here, confirm with discover-sink-dims"
)
_INTERNLM2 = (
    "cited from a secondary source: InternLM2, the language model of InternVL2-8B (Kang et al. 2025 as "
    "summarised in SPEC.md); not measured here, confirm with discover-sink-dims. The original checkpoint "
    "runs on remote code, not on transformers' InternVLForConditionalGeneration"
)

KNOWN: dict[str, SinkDims] = {
    **{
        record.name: SinkDims(record.sink_dims, record.sink_dims_source, record.tau, record.tau_reason,
                              record.visual_tau, record.visual_tau_reason)
        for record in BUILTIN_MODELS
    },
    "llava-hf/llava-1.5-7b-hf": SinkDims((1415, 2533), _LLAMA2_7B),
    "llava-hf/llava-1.5-13b-hf": SinkDims((2100, 4743), _LLAMA2_13B),
    "Qwen/Qwen2-VL-7B": SinkDims((458, 2570), _QWEN2_7B),
    "Qwen/Qwen2-VL-7B-Instruct": SinkDims((458, 2570), _QWEN2_7B),
    "OpenGVLab/InternVL2-8B": SinkDims((3584,), _INTERNLM2),
}


def known_sink_dims(name: str) -> SinkDims | None:
    """The registry entry for a model name or hub id, if any."""
    return KNOWN.get(name)
