"""Interventions: objects that return hooks for one run, and stacks of them (the hooks themselves: `sinklens.run`)."""

from sinklens.interventions.analysis import (
    AttentionContribution,
    AttentionMaps,
    HeadScores,
    RandomAblation,
    SinkAblation,
    image_map,
)
from sinklens.interventions.decoding import VCD, LogitsHook, OnPass
from sinklens.interventions.methods import HGAI, SPIN, VAF, scaled_layers
from sinklens.interventions.pai import PAI
from sinklens.interventions.registers import TestTimeRegisters, find_register_neurons
from sinklens.interventions.scan import SinkDimensionScan
from sinklens.interventions.sinks import FindSinks
from sinklens.interventions.stack import Edit, Stack
from sinklens.interventions.var import VAR
from sinklens.interventions.vision import FindVisionSinks

__all__ = [
    "AttentionContribution",
    "AttentionMaps",
    "HeadScores",
    "RandomAblation",
    "SinkAblation",
    "image_map",
    "PAI",
    "TestTimeRegisters",
    "find_register_neurons",
    "HGAI",
    "SPIN",
    "VAF",
    "scaled_layers",
    "VAR",
    "VCD",
    "Edit",
    "FindSinks",
    "FindVisionSinks",
    "LogitsHook",
    "OnPass",
    "SinkDimensionScan",
    "Stack",
]
