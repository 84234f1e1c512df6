"""sinklens: visual attention sinks in large multimodal models.

    import sinklens as sl
    lm = sl.load("tiny-llava")
    inputs = lm.prepare(image, "What is in the image?")
    result = sl.NnsightRunner(lm).generate(inputs, [sl.FindSinks(), sl.VAR()])
    result = sl.TransformerLensRunner(lm).generate(inputs, sl.Stack(sl.FindSinks(), sl.PAI(), sl.VAR()))

`import sinklens` imports nothing heavy: every public name loads on first use
(torch and transformers with the first model or intervention, nnsight and
TransformerLens with their runners), so `sinklens --help` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sinklens.errors import SinklensError

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and readers
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.backends.transformer_lens_backend import TransformerLensRunner
    from sinklens.explorer import explore
    from sinklens.interventions import (
        HGAI, PAI, SPIN, VAF, VAR, VCD, AttentionContribution, AttentionMaps, Edit, FindSinks, FindVisionSinks,
        HeadScores, LogitsHook, OnPass, RandomAblation, SinkAblation, SinkDimensionScan, Stack, TestTimeRegisters,
    )
    from sinklens.models import LoadedModel, from_hf, load
    from sinklens.run import Hook, RunContext, expand_inputs

# public name -> the module that defines it (loaded on first access)
_EXPORTS = {
    "sinklens.interventions": (
        "AttentionContribution", "AttentionMaps", "HeadScores", "RandomAblation", "SinkAblation", "SinkDimensionScan",
        "PAI", "VAF", "SPIN", "HGAI", "VAR", "VCD", "Edit", "FindSinks", "FindVisionSinks", "LogitsHook", "OnPass",
        "Stack", "TestTimeRegisters",
    ),
    "sinklens.run": ("Hook", "RunContext", "expand_inputs"),
    "sinklens.models": ("LoadedModel", "from_hf", "load"),
    "sinklens.backends.nnsight_backend": ("NnsightRunner",),
    "sinklens.backends.transformer_lens_backend": ("TransformerLensRunner",),
    "sinklens.explorer": ("explore",),  # above the run core: it imports sinklens itself
}
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_LAZY, "SinklensError"])

# the packages, reachable as attributes (`sl.interventions.image_map`) as after an eager import
_PACKAGES = ("backends", "builtin", "data", "eval", "explorer", "hf", "interventions", "models", "ops", "run")


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        return importlib.import_module(f"sinklens.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'sinklens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
