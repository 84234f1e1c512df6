"""Sink dimensions of known checkpoints, each with where the number comes from.

Sink dimensions belong to the language model a checkpoint is built on, so an
entry names the checkpoint and says whether the dimensions were measured here
or cited (and from where). For a checkpoint not listed, find them with
`sinklens discover-sink-dims --model NAME` and pass them as
`FindSinks(dims=...)` / `sinklens run --sink-dims ...`, or add an entry here.

>>> known_sink_dims("llava-hf/llava-1.5-7b-hf").dims
(1415, 2533)
"""

from __future__ import annotations

from dataclasses import dataclass

from sinklens.models.tiny import TINY_SINK_DIM


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


def _planted(where: str) -> str:
    return f"planted by construction ({where}: BOS and white patches)"


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
    "tiny-llava": SinkDims((TINY_SINK_DIM,), "planted by construction (sinklens.models.tiny.plant_sinks)"),
    "tiny-llava-next": SinkDims((TINY_SINK_DIM,), _planted("sinklens.models.tiny.plant_sinks")),
    "tiny-qwen2-vl": SinkDims((TINY_SINK_DIM,), _planted("sinklens.models.tiny_qwen.plant_qwen_sinks")),
    "tiny-qwen2.5-vl": SinkDims((TINY_SINK_DIM,), _planted("sinklens.models.tiny_qwen.plant_qwen_sinks")),
    "tiny-internvl": SinkDims((TINY_SINK_DIM,), _planted("sinklens.models.tiny_internvl.plant_internvl_sinks")),
    "toy-llava": SinkDims(
        (507,),
        "measured here: `sinklens discover-sink-dims --model toy-llava` finds 507 alone at SPEC's threshold "
        "of 20 (docs/toy-llava.md; SmolLM2-135M's massive activation)",
        tau=20.0,
        tau_reason=(
            "20 absolute (0.83 of phi's ceiling 24). The first token sits at 22.8-23.8 in layers 3-9 and 12-29 and "
            "no image token reaches 20 (at most 18.0 in 8 prompts); the width-relative 0.3125 * 24 = 7.5 "
            "marks 89 of 100 image tokens and "
            "34 text tokens per layer (docs/toy-llava.md, 'tau')"
        ),
        visual_tau=16.0,
        visual_tau_reason=(
            "measured by studies/toy_llava_sinks.py on 40 held-out scenes (docs/toy-llava/toy_llava_sinks*.json): "
            "no image token reaches 20 in any layer; at 16, 3.1 and 6.2 image tokens per scene (3-6%) pass in "
            "layers 23-24 and take 26% and 36% of the text-to-image attention, fewer than 0.6 per scene "
            "elsewhere; at 12, 21-70% of the image tokens pass in layers 19-24, no longer a few outliers. "
            "16 is the threshold at which image tokens pass as a few high-attention outliers"
        ),
    ),
    "llava-hf/llava-1.5-7b-hf": SinkDims((1415, 2533), _LLAMA2_7B),
    "llava-hf/llava-1.5-13b-hf": SinkDims((2100, 4743), _LLAMA2_13B),
    "Qwen/Qwen2-VL-7B": SinkDims((458, 2570), _QWEN2_7B),
    "Qwen/Qwen2-VL-7B-Instruct": SinkDims((458, 2570), _QWEN2_7B),
    "OpenGVLab/InternVL2-8B": SinkDims((3584,), _INTERNLM2),
}


def known_sink_dims(name: str) -> SinkDims | None:
    """The registry entry for a model name or hub id, if any."""
    return KNOWN.get(name)
