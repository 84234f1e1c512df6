"""sinklens: visual attention sinks in large multimodal models.

    import sinklens as sl
    lm = sl.load("tiny-llava")
    inputs = lm.prepare(image, "What is in the image?")
    result = sl.NnsightRunner(lm).generate(inputs, [sl.FindSinks(), sl.VAR()])
    result = sl.TransformerLensRunner(lm).generate(inputs, sl.Stack(sl.FindSinks(), sl.PAI(), sl.VAR()))

`import sinklens` imports neither nnsight nor TransformerLens; the backends load
on first use.
"""

from __future__ import annotations

from typing import Any

from sinklens.errors import SinklensError
from sinklens.interventions import (
    AttentionContribution,
    AttentionMaps,
    HeadScores,
    RandomAblation,
    SinkAblation,
    SinkDimensionScan,
    PAI,
    VAR,
    VCD,
    Edit,
    FindSinks,
    LogitsHook,
    OnPass,
    Stack,
)
from sinklens.models import LoadedModel, from_hf, load
from sinklens.run import Hook, RunContext, expand_inputs

__all__ = [
    "AttentionContribution",
    "AttentionMaps",
    "HeadScores",
    "RandomAblation",
    "SinkAblation",
    "SinkDimensionScan",
    "PAI",
    "VAR",
    "VCD",
    "Edit",
    "FindSinks",
    "Hook",
    "LoadedModel",
    "LogitsHook",
    "NnsightRunner",
    "OnPass",
    "RunContext",
    "SinklensError",
    "Stack",
    "TransformerLensRunner",
    "expand_inputs",
    "explore",
    "from_hf",
    "load",
]

_LAZY = {
    "NnsightRunner": "sinklens.backends.nnsight_backend",
    "TransformerLensRunner": "sinklens.backends.transformer_lens_backend",
    "explore": "sinklens.explorer",  # above the run core: it imports sinklens itself
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sinklens' has no attribute {name!r}")
