"""The built-in models, one record each: how to build it, its demo scene, its sink dimensions, its visual sinks.

`sinklens.load(name)` builds a built-in from its record, `sink_dims.KNOWN` takes
its sink dimensions from it, `demo_scene(name)` draws its scene, and the
tests run every planted one on its scene and expect a visual sink at each cell
of `visual_sinks`. Adding a built-in is adding a record here.

>>> builtin("tiny-llava").architecture
'LlavaForConditionalGeneration'
>>> from sinklens.builtin import DEFAULT_MODEL
>>> BUILTIN_NAMES[0] == DEFAULT_MODEL
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sinklens.errors import ParameterError
from sinklens.builtin.tiny_llava import build_tiny_llava, draw_scene, plant_sinks
from sinklens.builtin.tiny_internvl import build_tiny_internvl, draw_internvl_scene, plant_internvl_sinks
from sinklens.builtin.tiny_next import build_tiny_llava_next, draw_wide_scene
from sinklens.builtin.tiny_onevision import build_tiny_onevision, draw_onevision_scene, plant_onevision_sinks
from sinklens.builtin.tiny_qwen3 import build_tiny_qwen3_vl, draw_qwen3_scene, plant_qwen3_sinks
from sinklens.builtin.tiny_gemma3 import build_tiny_gemma3, draw_gemma3_scene, plant_gemma3_sinks
from sinklens.builtin.tiny_smolvlm import build_tiny_smolvlm, draw_smolvlm_scene, plant_smolvlm_sinks
from sinklens.builtin.tiny_mistral3 import build_tiny_mistral3, draw_mistral3_scene, plant_mistral3_sinks
from sinklens.builtin.tiny_qwen import build_tiny_qwen2_5_vl, build_tiny_qwen2_vl, draw_qwen_scene, plant_qwen_sinks
from sinklens.builtin.tiny_shared import TINY_SINK_DIM
from sinklens.builtin.toy_llava import load_toy_llava

Cell = tuple[str, int, int]  # (tile name, row, col) on the grids of `ImageSpans.images`


@dataclass(frozen=True, kw_only=True)
class BuiltIn:
    """A model `sinklens.load` builds offline, and what is known of its sinks."""

    name: str
    architecture: str  # the transformers class `build` returns; a hooks/*.toml file lists it
    build: Callable[[], tuple[Any, Any]]  # () -> (model, processor): fp32, eager attention, on the CPU
    scene: Callable[[], Image.Image]  # the demo scene
    sink_dims: tuple[int, ...]
    sink_dims_source: str  # starts "planted" or "measured here", as every sink_dims.KNOWN entry
    tau: float | None = None  # the model's default sink threshold, when it is not the paper's 20
    tau_reason: str | None = None
    # the threshold at which image tokens pass as a few high-attention outliers, when it is not `tau`
    visual_tau: float | None = None
    visual_tau_reason: str | None = None
    # (tile name, row, col) of every visual sink the planted weights make on `scene`; empty when
    # the sinks are learnt, not planted
    visual_sinks: tuple[Cell, ...] = ()

    @property
    def planted(self) -> bool:
        """Sinks made by construction (random weights with planted values), not learnt."""
        return bool(self.visual_sinks)


def _planted(plant: Callable[..., None]) -> str:
    return f"planted by construction ({plant.__module__}.{plant.__qualname__}: BOS and white patches)"


def _tiny(name: str, architecture: str, build: Callable[..., Any], scene: Callable[[], Image.Image],
          plant: Callable[..., None], visual_sinks: tuple[Cell, ...]) -> BuiltIn:  # fmt: skip
    """A random-weight built-in whose sinks `plant` makes in dimension TINY_SINK_DIM."""
    return BuiltIn(name=name, architecture=architecture, build=build, scene=scene, sink_dims=(TINY_SINK_DIM,),
                   sink_dims_source=_planted(plant), visual_sinks=visual_sinks)  # fmt: skip


def _heldout_scene() -> Image.Image:
    from sinklens.data.scenes import scene

    return scene("heldout", 0).image()


_QWEN_SINKS: tuple[Cell, ...] = (("image", 0, 0), ("image", 2, 1))

BUILTIN_MODELS: tuple[BuiltIn, ...] = (
    # SmolLM2 + DINOv2, a trained projector and LM adapter: the default model
    BuiltIn(
        name="toy-llava",
        architecture="LlavaForConditionalGeneration",
        build=load_toy_llava,
        scene=_heldout_scene,
        sink_dims=(507,),
        sink_dims_source=(
            "measured here: `sinklens discover-sink-dims --model toy-llava` finds 507 alone at SPEC's threshold "
            "of 20 (docs/toy-llava.md; SmolLM2-135M's massive activation)"
        ),
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
    # random weights with planted sinks, one per architecture: tests of the mechanics
    _tiny("tiny-llava", "LlavaForConditionalGeneration", build_tiny_llava, draw_scene, plant_sinks,
          (("image", 0, 0), ("image", 2, 2))),
    _tiny("tiny-llava-next", "LlavaNextForConditionalGeneration", build_tiny_llava_next, draw_wide_scene, plant_sinks,
          (("base", 0, 1), ("base", 3, 4), ("tiles", 0, 2), ("tiles", 0, 3), ("tiles", 3, 8), ("tiles", 3, 9))),
    _tiny("tiny-qwen2-vl", "Qwen2VLForConditionalGeneration", build_tiny_qwen2_vl, draw_qwen_scene, plant_qwen_sinks,
          _QWEN_SINKS),
    _tiny("tiny-qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", build_tiny_qwen2_5_vl, draw_qwen_scene, plant_qwen_sinks,
          _QWEN_SINKS),
    _tiny("tiny-internvl", "InternVLForConditionalGeneration", build_tiny_internvl, draw_internvl_scene, plant_internvl_sinks,
          (("tile 0", 0, 0), ("tile 1", 2, 1))),
    _tiny("tiny-llava-onevision", "LlavaOnevisionForConditionalGeneration", build_tiny_onevision, draw_onevision_scene,
          plant_onevision_sinks, (("base", 0, 0), ("base", 3, 3), ("tiles", 0, 0), ("tiles", 0, 1), ("tiles", 3, 6),
                                  ("tiles", 3, 7))),
    _tiny("tiny-qwen3-vl", "Qwen3VLForConditionalGeneration", build_tiny_qwen3_vl, draw_qwen3_scene, plant_qwen3_sinks,
          _QWEN_SINKS),
    _tiny("tiny-gemma3", "Gemma3ForConditionalGeneration", build_tiny_gemma3, draw_gemma3_scene, plant_gemma3_sinks,
          _QWEN_SINKS),
    _tiny("tiny-smolvlm", "SmolVLMForConditionalGeneration", build_tiny_smolvlm, draw_smolvlm_scene, plant_smolvlm_sinks,
          tuple(("row 1 col 1", r, c) for r in (0, 1) for c in (0, 1)) + tuple(("row 2 col 2", r, c) for r in (0, 1)
                for c in (2, 3)) + (("global", 0, 0), ("global", 2, 3))),
    _tiny("tiny-mistral3", "Mistral3ForConditionalGeneration", build_tiny_mistral3, draw_mistral3_scene,
          plant_mistral3_sinks, (("image", 0, 0), ("image", 2, 5))),
)
BUILTIN_NAMES: tuple[str, ...] = tuple(record.name for record in BUILTIN_MODELS)
# name -> () -> (model, processor)
BUILTINS: dict[str, Callable[[], tuple[Any, Any]]] = {record.name: record.build for record in BUILTIN_MODELS}


def builtin(name: str) -> BuiltIn:
    """The record of the built-in `name`."""
    for record in BUILTIN_MODELS:
        if record.name == name:
            return record
    raise ParameterError(f"{name!r} is not a built-in model; the built-ins are {', '.join(BUILTIN_NAMES)}")


def demo_scene(name: str) -> Image.Image:
    """A scene whose white blocks the planted built-in `name` turns into visual sinks (toy-llava: a held-out scene)."""
    return builtin(name).scene()
