"""nnsight backend: run a stack of interventions inside nnsight traces.

The only module, with the TransformerLens backend, that imports nnsight. Hook
names are resolved to nnsight paths through the model's hook catalogue.

Inside your own trace (nnsight runs the block out of its frame, so make the
context before it; the interventions fill it in place)::

    lm = sinklens.load("tiny-llava")
    model = wrap(lm)
    inputs = lm.prepare(image, "What is in the image?")
    ctx = make_context(lm, inputs)
    with torch.no_grad(), model.trace(**inputs):
        attach(model, lm, [FindSinks(), VAR()], inputs, ctx=ctx)
        logits = model.output.logits.save()

and inside your own generation, one step at a time from step 0::

    with torch.no_grad(), model.generate(**inputs, max_new_tokens=8, min_new_tokens=8) as tracer:
        attach(model, lm, [FindSinks(), VAR()], inputs, tracer=tracer, steps=8, ctx=ctx)

or in one call: `NnsightRunner(lm).generate(inputs, [FindSinks(), VAR()])`.
A stack with VCD runs two passes in one batch: give your own trace
`expand_inputs(stack, inputs)` instead of `inputs` (the runner does it).

Remote: `NnsightRunner(lm, remote="local")` runs every call through nnsight's
local simulation of a remote request, `remote=True` on NDIF (build that runner
with `sinklens.backends.remote.connect(hub_id)`); a call's `remote=` overrides
the runner's. The client makes the `plan` (hooks grouped by point, with their
nnsight paths); `run_plan` is what runs next to the model. docs/remote.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import nnsight
import torch
from torch import Tensor

from sinklens.backends.common import (
    ForwardResult,
    GenerationResult,
    Recorder,
    finish_generation,
    make_context,
    prepare,
)
from sinklens.backends.remote import check_remote_argument, shipping, trace_options
from sinklens.errors import CatalogueError
from sinklens.interventions.base import (
    Hook, Members, RunContext, apply_point, module_weights, ordered_hooks, wants_weights,
)
from sinklens.models.catalogue import HookCatalogue
from sinklens.models.loading import LoadedModel

__all__ = [
    "ForwardResult", "GenerationResult", "NnsightRunner", "PlanPoint", "attach", "make_context", "plan",
    "run_hooks", "run_plan", "wrap",
]


def wrap(loaded: LoadedModel) -> Any:
    """An `nnsight.TransformersModel` around the loaded HF model (no copy of the weights)."""
    from nnsight import TransformersModel

    return TransformersModel(
        loaded.model, processor=loaded.processor, tokenizer=loaded.tokenizer, task="image-text-to-text"
    )


def _split(path: str) -> tuple[str, str, int | None]:
    """'a.b.output.0' -> ('a.b', 'output', 0); 'a.b.input' -> ('a.b', 'input', None)."""
    head, _, last = path.rpartition(".")
    if last.isdigit():
        module, _, attribute = head.rpartition(".")
        return module, attribute, int(last)
    return head, last, None


def plan_points(catalogue: HookCatalogue, hooks: Sequence[Hook]) -> list[PlanPoint]:
    """Ordered hooks grouped by point, each point resolved to its nnsight path (on the client).

    The plan is what travels to an NDIF server: paths as strings and the hook
    functions, so the server needs neither the catalogue nor its TOML files.
    """
    points = []
    for _, grouped in groupby(hooks, key=lambda hook: hook.name):
        group = tuple(grouped)
        module_path, attribute, index = _split(catalogue.nnsight_path(group[0].point))
        points.append(PlanPoint(group[0].name, module_path, attribute, index, group, str(catalogue.source)))
    return points


@dataclass(frozen=True)
class PlanPoint:
    """One hook point of a run: where it lives in the nnsight tree and the hooks applied there, in order."""

    name: str
    module_path: str
    attribute: str  # "input", "output", or a .source operation's "input"/"output"
    index: int | None  # element of a tuple input/output, or None for the whole value
    hooks: tuple[Hook, ...]
    source: str  # the catalogue file the path comes from, for error messages


# ---- what runs next to the model (locally, or on an NDIF server) ------------------------------
# These functions run inside the trace. For a remote run they are shipped by value (with the
# interventions' hook functions and the ops they call): they use torch and sinklens code only.


def _envoy(root: Any, point: PlanPoint) -> Any:
    node = root
    for part in point.module_path.split("."):
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, KeyError) as e:
            raise CatalogueError(
                f"{point.source}: the path of {point.name!r} ({point.module_path}) fails at {part!r} on the "
                f"installed transformers: {e}. Fix the path in the catalogue file."
            ) from e
    return node


def _run_point(root: Any, point: PlanPoint, ctx: RunContext) -> None:
    """Read one hook point once, apply its functions in order, write back if any returned a tensor."""
    envoy = _envoy(root, point)
    whole = getattr(envoy, point.attribute)
    value = whole[point.index] if point.index is not None else whole
    weights = None
    if wants_weights(point.hooks):  # read here, next to the model: the request carries no weight
        weights = module_weights(envoy if point.attribute == "input" else None, f"{point.name!r} ({point.source})")
    result = apply_point(point.hooks, value, ctx, weights)
    if result is not None:
        if point.index is not None:
            parts = list(whole)
            parts[point.index] = result
            result = type(whole)(parts)
        setattr(envoy, point.attribute, result)


def _run_step(root: Any, plan: Sequence[PlanPoint], ctx: RunContext) -> None:
    for point in plan:
        # a point whose hooks are all prefill-only is not even read while decoding
        if ctx.prefill or not all(hook.prefill_only for hook in point.hooks):
            _run_point(root, point, ctx)


def run_plan(
    root: Any, plan: Sequence[PlanPoint], ctx: RunContext, *, tracer: Any = None, steps: int | None = None
) -> dict[str, Any]:
    """Apply a plan inside a trace (prefill) or at every step `0..steps-1` of a generation.

    Returns what the interventions found, as plain data (`RunContext.state()`):
    the part of `ctx` a remote run sends back.
    """
    if tracer is None or steps is None:
        _run_step(root, plan, ctx)
    else:
        for step in tracer.iter[:steps]:
            ctx.step = step
            _run_step(root, plan, ctx)
    return ctx.state()


# ---- the client side --------------------------------------------------------------------------


def run_hooks(root: Any, catalogue: HookCatalogue, hooks: Sequence[Hook], ctx: RunContext) -> None:
    """Apply ordered hooks inside a trace, for the step in `ctx.step`."""
    _run_step(root, plan_points(catalogue, hooks), ctx)


def attach(
    model: Any,
    loaded: LoadedModel,
    interventions: Members,
    inputs: Mapping[str, Tensor],
    *,
    tracer: Any = None,
    steps: int | None = None,
    ctx: RunContext | None = None,
) -> RunContext:
    """Apply a stack inside an open `model.trace()` (prefill) or `model.generate()` (`tracer`, `steps`).

    nnsight runs the body of a `with` block out of its frame: make the context
    before the block with `make_context` and pass it as `ctx` to read it after.

    With `tracer` and `steps`, the hooks run on every step `0..steps-1` of the
    generation (step 0 is the prompt); generate with `min_new_tokens=steps` so
    that every step happens. Returns the run context the interventions fill.
    For a remote trace use `plan` and `run_plan` instead (see docs/remote.md).
    """
    ctx = ctx or make_context(loaded, inputs)
    run_plan(model, plan(loaded, interventions, ctx), ctx, tracer=tracer, steps=steps)
    return ctx


def plan(loaded: LoadedModel, interventions: Members, ctx: RunContext) -> list[PlanPoint]:
    """The plan of a stack for one run: its hooks in run order, grouped by point, with nnsight paths."""
    return plan_points(loaded.catalogue, ordered_hooks(interventions, ctx))


Remote = Any  # False (run here), "local" (nnsight's local simulation), True (NDIF), or a Simulation


class NnsightRunner:
    """One-call runs of a stack on a loaded model through nnsight.

    `remote` is the default for every call: `False` runs here, `"local"` runs
    nnsight's local simulation of a remote request (serialised, deserialised
    with local modules hidden, then run here), `True` sends the request to NDIF
    (see `sinklens.backends.remote.connect`), and a
    `sinklens.backends.remote.Simulation()` runs the local simulation and keeps
    the size of every request. Each call can override it.
    """

    def __init__(self, loaded: LoadedModel, *, model: Any = None, remote: Remote = False) -> None:
        check_remote_argument(remote)
        self.loaded = loaded
        self.model = model if model is not None else wrap(loaded)
        self.remote = remote

    def forward(
        self, inputs: Mapping[str, Tensor], interventions: Members = (), *, remote: Remote | None = None
    ) -> ForwardResult:
        """One forward pass over the prompt with the stack applied."""
        remote = self.remote if remote is None else check_remote_argument(remote)
        prepared = prepare(self.loaded, inputs, interventions)
        ctx = prepared.ctx
        model = self.model  # the block names only small objects: they are what a remote request ships
        with shipping(self.loaded, remote):
            points = plan(self.loaded, interventions, ctx)
            with torch.no_grad(), model.trace(**prepared.inputs, **trace_options(model, remote)):
                state = nnsight.save(run_plan(model, points, ctx))
                logits = model.output.logits.save()
        ctx.update(state)
        return ForwardResult(logits=logits[: prepared.n_prompts], ctx=ctx)

    def generate(
        self,
        inputs: Mapping[str, Tensor],
        interventions: Members = (),
        *,
        max_new_tokens: int = 16,
        remote: Remote | None = None,
    ) -> GenerationResult:
        """Greedy decoding with the KV cache; the stack acts in prefill and at every step."""
        remote = self.remote if remote is None else check_remote_argument(remote)
        prepared = prepare(self.loaded, inputs, interventions)
        ctx = prepared.ctx
        recorder = Recorder()
        model, steps = self.model, max_new_tokens
        with shipping(self.loaded, remote):
            points = plan(self.loaded, [interventions, recorder], ctx)
            with torch.no_grad(), model.generate(
                **prepared.inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                pad_token_id=self.loaded.tokenizer.pad_token_id, **trace_options(model, remote),
            ) as tracer:
                state = nnsight.save(run_plan(model, points, ctx, tracer=tracer, steps=steps))
                store = nnsight.save(recorder.store)
        ctx.update(state)
        return finish_generation(self.loaded, prepared, Recorder(store=store))
