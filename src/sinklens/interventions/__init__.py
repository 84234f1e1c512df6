"""Interventions: objects that return (hook name, function) pairs for one run."""

from sinklens.interventions.base import Hook, Intervention, RunContext, ordered_hooks
from sinklens.interventions.scan import SinkDimensionScan
from sinklens.interventions.sinks import FindSinks
from sinklens.interventions.var import VAR

__all__ = ["VAR", "FindSinks", "Hook", "Intervention", "RunContext", "SinkDimensionScan", "ordered_hooks"]
