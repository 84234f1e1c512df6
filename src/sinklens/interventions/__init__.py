"""Interventions: objects that return (hook name, function) pairs for one run, and stacks of them."""

from sinklens.interventions.analysis import (
    AttentionContribution,
    AttentionMaps,
    HeadScores,
    RandomAblation,
    SinkAblation,
    image_map,
)
from sinklens.interventions.base import Hook, Intervention, RunContext, apply_point, ordered_hooks
from sinklens.interventions.decoding import VCD, LogitsHook, OnPass
from sinklens.interventions.pai import PAI
from sinklens.interventions.scan import SinkDimensionScan
from sinklens.interventions.sinks import FindSinks
from sinklens.interventions.stack import Edit, Stack, expand_inputs
from sinklens.interventions.var import VAR

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
