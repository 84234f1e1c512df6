"""Interventions: objects that return (hook name, function) pairs for one run, and stacks of them."""

from sinklens.interventions.analysis import (
    AttentionContribution,
    AttentionMaps,
    HeadScores,
    RandomAblation,
    SinkAblation,
    image_map,
)
from sinklens.interventions.decoding import VCD, LogitsHook, OnPass
from sinklens.interventions.pai import PAI
from sinklens.interventions.scan import SinkDimensionScan
from sinklens.interventions.sinks import FindSinks
from sinklens.interventions.stack import Edit, Stack
from sinklens.interventions.var import VAR
from sinklens.run import Hook, Intervention, RunContext, apply_point, expand_inputs, ordered_hooks

__all__ = [
    "AttentionContribution",
    "AttentionMaps",
    "HeadScores",
    "RandomAblation",
    "SinkAblation",
    "image_map",
    "PAI",
    "VAR",
    "VCD",
    "Edit",
    "FindSinks",
    "Hook",
    "Intervention",
    "LogitsHook",
    "OnPass",
    "RunContext",
    "SinkDimensionScan",
    "Stack",
    "apply_point",
    "expand_inputs",
    "ordered_hooks",
]
