"""The run core every backend shares. No nnsight or TransformerLens here.

A run goes:

1. `begin(loaded, inputs, members)` (`inputs.py`): the model inputs for the
   stack (one member may add passes: VCD appends a noised copy of every prompt)
   and the run's `RunContext`, whose `RunSpec` (image spans, padding, text
   start, model facts, passes) is computed here, once.
2. `plan(members, ctx)` (`plan.py`): every member's `Hook`s (`hooks.py`) in run
   order, grouped by hook point. A stack takes each intervention at most once
   per hook point (`ordered_hooks`).
3. at each point the backend reads the tensor, converts its layout, calls
   `apply_point` with that point's hooks and writes back what it returns; it
   moves the run's cursor (`ctx.enter_step`, `ctx.enter_point`) and nothing
   else of the context.
4. what the members found (`ctx.found`, which they fill through `found.add`)
   comes back to the client (`state()` / `update()` for a remote run) and into
   the result (`results.py`).
"""

from sinklens.run.context import Cursor, Findings, QueryRows, RunContext, RunSpec, writable, write_rows
from sinklens.run.hooks import (
    Hook,
    HookFn,
    Intervention,
    Member,
    Members,
    ModuleWeights,
    describe_hook,
    hooks_of,
    ordered_hooks,
    resolve_layers,
)
from sinklens.run.inputs import MultiPass, RunInputs, begin, expand_inputs, make_context, multi_pass
from sinklens.run.plan import Plan, PlanPoint, apply_point, module_weights, plan
from sinklens.run.prefixes import PrefixStore, Sharing
from sinklens.run.protocol import Runner
from sinklens.run.results import CacheResult, ForwardResult, GenerationResult, Recorder, finish_generation

__all__ = [
    "CacheResult",
    "Cursor",
    "Findings",
    "ForwardResult",
    "GenerationResult",
    "Hook",
    "HookFn",
    "Intervention",
    "Member",
    "Members",
    "ModuleWeights",
    "MultiPass",
    "Plan",
    "PlanPoint",
    "PrefixStore",
    "QueryRows",
    "Recorder",
    "RunContext",
    "RunInputs",
    "RunSpec",
    "Runner",
    "Sharing",
    "apply_point",
    "begin",
    "describe_hook",
    "expand_inputs",
    "finish_generation",
    "hooks_of",
    "make_context",
    "module_weights",
    "multi_pass",
    "ordered_hooks",
    "plan",
    "resolve_layers",
    "writable",
    "write_rows",
]
