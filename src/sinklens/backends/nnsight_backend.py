"""nnsight backend: run a stack of interventions inside nnsight traces.

The only module, with the TransformerLens backend, that runs nnsight traces.
It finds each hook point of a plan (`sinklens.run.plan`) in the nnsight tree
through the model's hook catalogue, reads it, applies its hooks
(`sinklens.run.apply_point`) and writes back; the rest is the run core's.

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

A model loaded with `attention="rows"` runs the rows route: each point at
`attn.hook_attn_scores` / `attn.hook_pattern` is found inside sinklens' own
attention function (the catalogue's `[nnsight_rows]` table), and before the
layer's attention call the run writes which query rows to compute explicitly
into the call's inputs (`SelectRows`): in prefill the text queries (from the
earliest text start), or every row where a hook reads them all (a hook
without `query_rows=True`); while decoding the new token, where a hook acts
then. Layers and steps with no such hook run sdpa alone.

Remote: `NnsightRunner(lm, remote="local")` runs every call through nnsight's
local simulation of a remote request, `remote=True` on NDIF (build that runner
with `sinklens.backends.remote.connect(hub_id)`); a call's `remote=` overrides
the runner's. The client resolves the plan to nnsight paths (`locate`);
`run_located` is what runs next to the model. docs/remote.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import nnsight
import torch
from torch import Tensor

from sinklens.backends.shared_prefixes import generate_shared, layout_refusal
from sinklens.backends.shipping import Remote, check_remote_argument, shipping, trace_options
from sinklens.errors import CatalogueError, ParameterError
from sinklens.hf import AttentionRoute
from sinklens.hf.rows_attention import EXPLICIT_ROW_POINTS, FIRST_ROW, ROWS_OPS
from sinklens.models.catalogue import HookCatalogue
from sinklens.models.loaded import LoadedModel
from sinklens.run import (
    ForwardResult, GenerationResult, Members, Plan, PlanPoint, Recorder, RunContext, apply_point, begin,
    finish_generation, make_context, module_weights, ordered_hooks, plan,
)
from sinklens.run.prefixes import PrefixStore, Sharing, refusal

__all__ = [
    "ForwardResult", "GenerationResult", "Located", "NnsightRunner", "RowSelection", "SelectRows", "attach", "locate",
    "make_context", "row_selection", "run_located", "wrap",
]


def wrap(loaded: LoadedModel) -> Any:
    """An `nnsight.TransformersModel` around the loaded HF model (no copy of the weights)."""
    from nnsight import TransformersModel

    return TransformersModel(
        loaded.model, processor=loaded.processor, tokenizer=loaded.tokenizer, task="image-text-to-text"
    )


@dataclass(frozen=True)
class Located:
    """A plan point and where it lives in the nnsight tree (resolved on the client: the server needs no catalogue)."""

    planned: PlanPoint
    module_path: str
    attribute: str  # "input", "output", or a .source operation's "input"/"output"
    index: int | None  # element of a tuple input/output, or None for the whole value
    source: str  # the catalogue file the path comes from, for error messages
    held_from: int = 0  # prompt position of the first query row an attention point holds in prefill (rows route)


@dataclass(frozen=True)
class SelectRows:
    """The rows route, before one layer's attention call: the first query row it computes explicitly.

    `prefill_row` in prefill (None: no row, sdpa alone), row 0 (the new token)
    while decoding when `decoding`, else none.
    """

    layer: int
    module_path: str  # the attention call, a .source operation
    prefill_row: int | None
    decoding: bool
    source: str


@dataclass(frozen=True)
class RowSelection:
    """Which rows a plan needs on the rows route: per layer, the first prefill row; layers needing the new token."""

    prefill: dict[int, int]
    decoding: frozenset[int]


def row_selection(points: Plan, ctx: RunContext) -> RowSelection:
    """The rows each layer's attention must compute explicitly for a plan (the rows route).

    A layer with a hook at `attn.hook_attn_scores` or `attn.hook_pattern`
    computes, in prefill, the rows from the earliest text start when every such
    hook declares `query_rows=True`, else every row (eager's full pattern); and,
    while decoding, the new token's row when one of them is not prefill-only.
    """
    # the last prompt row at most: the rows then hold at least one row (the text start is within the prompt)
    text_from = min(ctx.spec.text_from, ctx.prompt_length - 1)
    prefill: dict[int, int] = {}
    decoding = set()
    for point in points:
        hook_point = point.point
        if hook_point.kind not in EXPLICIT_ROW_POINTS:
            continue
        first = text_from if all(hook.query_rows for hook in point.hooks) else 0
        prefill[hook_point.layer] = min(prefill.get(hook_point.layer, first), first)
        if not point.prefill_only:
            decoding.add(hook_point.layer)
    return RowSelection(prefill, frozenset(decoding))


def _split(path: str) -> tuple[str, str, int | None]:
    """'a.b.output.0' -> ('a.b', 'output', 0); 'a.b.input' -> ('a.b', 'input', None)."""
    head, _, last = path.rpartition(".")
    if last.isdigit():
        module, _, attribute = head.rpartition(".")
        return module, attribute, int(last)
    return head, last, None


def locate(
    catalogue: HookCatalogue, points: Plan, ctx: RunContext | None = None, *, route: AttentionRoute = "eager"
) -> tuple[Located | SelectRows, ...]:
    """Each point of a plan with its nnsight path: what travels to an NDIF server with the hook functions.

    On the rows route (`route="rows"`, which needs `ctx`) each layer whose
    attention computes explicit rows gets a `SelectRows` before its first
    attention point, and its attention points say which rows they hold.
    """
    source = str(catalogue.source)
    if route != "rows":
        return tuple(Located(point, *_split(catalogue.nnsight_path(point.point)), source) for point in points)
    if ctx is None:
        raise ParameterError("locate(..., route='rows') needs the run context (ctx=...): the rows depend on the prompt")
    selection = row_selection(points, ctx)
    located: list[Located | SelectRows] = []
    selected: set[int] = set()
    for point in points:
        hook_point = point.point
        layer = hook_point.layer
        if hook_point.kind in ROWS_OPS and layer in selection.prefill and layer not in selected:
            selected.add(layer)
            located.append(SelectRows(layer, catalogue.rows_call(layer), selection.prefill[layer],
                                      layer in selection.decoding, source))  # fmt: skip
        held_from = selection.prefill.get(layer, 0) if hook_point.kind in EXPLICIT_ROW_POINTS else 0
        located.append(Located(point, *_split(catalogue.nnsight_path(hook_point, "rows")), source, held_from))
    return tuple(located)


# ---- what runs next to the model (locally, or on an NDIF server) ------------------------------
# These functions run inside the trace. For a remote run they are shipped by value (with the
# interventions' hook functions and the ops they call): they use torch and sinklens code only.


def _envoy(root: Any, module_path: str, what: str, source: str) -> Any:
    node = root
    for part in module_path.split("."):
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, KeyError) as e:
            raise CatalogueError(
                f"{source}: the path of {what} ({module_path}) fails at {part!r} on the "
                f"installed transformers: {e}. Fix the path in the catalogue file."
            ) from e
    return node


def _select_rows(root: Any, where: SelectRows, ctx: RunContext) -> None:
    """Write the first explicit query row of this step into the layer's attention call (nothing: sdpa alone)."""
    first = where.prefill_row if ctx.prefill else (0 if where.decoding else None)
    if first is None:
        return
    if ctx.prefill:  # the call's query rows start at the first position the pass holds (a continuation: the suffix)
        first = max(first - ctx.spec.first_position, 0)
    call = _envoy(root, where.module_path, f"the attention call of layer {where.layer}", where.source)
    args, kwargs = call.inputs
    call.inputs = (args, {**kwargs, FIRST_ROW: first})


def _run_point(root: Any, where: Located, ctx: RunContext) -> None:
    """Read one hook point once, apply its functions in order, write back if any returned a tensor."""
    ctx.enter_point(where.held_from)
    envoy = _envoy(root, where.module_path, repr(where.planned.name), where.source)
    whole = getattr(envoy, where.attribute)
    value = whole[where.index] if where.index is not None else whole
    weights = None
    if where.planned.wants_weights:  # read here, next to the model: the request carries no weight
        module = envoy if where.attribute == "input" else None
        weights = module_weights(module, f"{where.planned.name!r} ({where.source})")
    result = apply_point(where.planned.hooks, value, ctx, weights)
    if result is not None:
        if where.index is not None:
            parts = list(whole)
            parts[where.index] = result
            result = type(whole)(parts)
        setattr(envoy, where.attribute, result)


def _run_step(root: Any, located: Sequence[Located | SelectRows], ctx: RunContext) -> None:
    for where in located:
        if isinstance(where, SelectRows):
            _select_rows(root, where, ctx)
        elif ctx.prefill or not where.planned.prefill_only:  # a prefill-only point is not even read while decoding
            _run_point(root, where, ctx)


def run_located(
    root: Any, located: Sequence[Located | SelectRows], ctx: RunContext, *, tracer: Any = None, steps: int | None = None
) -> dict[str, Any]:
    """Apply a located plan inside a trace (prefill) or at every step `0..steps-1` of a generation.

    Returns what the interventions found, as plain data (`RunContext.state()`):
    the part of `ctx` a remote run sends back.
    """
    if tracer is None or steps is None:
        _run_step(root, located, ctx)
    else:
        for step in tracer.iter[:steps]:
            ctx.enter_step(step)
            _run_step(root, located, ctx)
    return ctx.state()


# ---- the client side --------------------------------------------------------------------------


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
    For a remote trace use `locate` and `run_located` instead (see docs/remote.md).
    """
    ctx = ctx or make_context(loaded, inputs, interventions)
    located = locate(loaded.catalogue, plan(interventions, ctx), ctx, route=loaded.attention)
    run_located(model, located, ctx, tracer=tracer, steps=steps)
    return ctx


class NnsightRunner:
    """One-call runs of a stack on a loaded model through nnsight.

    `remote` is the default for every call: `False` runs here, `"local"` runs
    nnsight's local simulation of a remote request (serialised, deserialised
    with local modules hidden, then run here), `True` sends the request to NDIF
    (see `sinklens.backends.remote.connect`), and a
    `sinklens.testing.Simulation()` runs the local simulation and keeps the
    size of every request. Each call can override it.
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
        run = begin(self.loaded, inputs, interventions)
        logits, _ = self.trace(run.inputs, run.ctx, plan(interventions, run.ctx), remote=remote)
        return ForwardResult(logits=logits[: run.n_prompts], ctx=run.ctx)

    def generate(
        self,
        inputs: Mapping[str, Tensor],
        interventions: Members = (),
        *,
        max_new_tokens: int = 16,
        remote: Remote | None = None,
        prefixes: PrefixStore | None = None,
    ) -> GenerationResult:
        """Greedy decoding with the KV cache; the stack acts in prefill and at every step.

        Runs exactly `max_new_tokens` steps with EOS suppressed (`min_new_tokens`),
        so both backends decode the same tokens; texts stop at the first EOS.

        With `prefixes` (a `PrefixStore` of this stack), every distinct image
        prefix is computed once, kept in the store, and each prompt continues
        from its cache (`sinklens.run.prefixes`): the same logits, a fraction of
        the work when images repeat. A stack with a member that is not
        prefix-safe, or a remote run, goes prompt by prompt; `result.sharing` says
        which happened and why.
        """
        remote = self.remote if remote is None else check_remote_argument(remote)
        run = begin(self.loaded, inputs, interventions)
        sharing = None
        if prefixes is not None:
            prefixes.check(interventions)
            reason = refusal(ordered_hooks(interventions, run.ctx), remote=remote is not False)
            reason = reason or layout_refusal(self.loaded, run)
            if not reason:
                return generate_shared(self, run, interventions, max_new_tokens, prefixes)
            sharing = Sharing(False, prompts=len(run.inputs["input_ids"]), reason=reason)
        store = self.decode(run.inputs, run.ctx, interventions, max_new_tokens, remote=remote)
        return replace(finish_generation(self.loaded, run, store), sharing=sharing)

    def trace(
        self, inputs: Mapping[str, Tensor], ctx: RunContext, points: Plan, *, remote: Remote = False, **model_kwargs: Any
    ) -> tuple[Tensor, Any]:
        """One forward pass with a plan applied: (the logits, the model's KV cache when `use_cache=True` is given)."""
        model = self.model  # the block names only small objects: they are what a remote request ships
        keep_cache = bool(model_kwargs.get("use_cache"))
        cache = None  # nnsight hands back only what the block saves
        with self._shipping(remote):
            located = locate(self.loaded.catalogue, points, ctx, route=self.loaded.attention)
            options = self._trace_options(remote)
            with torch.no_grad(), model.trace(**inputs, **model_kwargs, **options):
                state = nnsight.save(run_located(model, located, ctx))
                logits = model.output.logits.save()
                if keep_cache:
                    cache = model.output.past_key_values.save()
        ctx.update(state)
        return logits, cache

    def decode(
        self, inputs: Mapping[str, Tensor], ctx: RunContext, interventions: Members, steps: int, *,
        remote: Remote = False, **model_kwargs: Any,
    ) -> list[Tensor]:
        """Greedy generation of `steps` tokens with the stack at every step: the logits each step chose from."""
        recorder = Recorder()
        model = self.model
        with self._shipping(remote):
            located = locate(self.loaded.catalogue, plan([interventions, recorder], ctx), ctx, route=self.loaded.attention)
            options = self._trace_options(remote)
            with torch.no_grad(), model.generate(
                **inputs, **model_kwargs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                pad_token_id=self.loaded.tokenizer.pad_token_id, **options,
            ) as tracer:
                state = nnsight.save(run_located(model, located, ctx, tracer=tracer, steps=steps))
                store = nnsight.save(recorder.store)
        ctx.update(state)
        return store

    # a local run (remote=False) does not enter the shipping layer at all
    def _shipping(self, remote: Remote) -> AbstractContextManager[None]:
        return nullcontext() if remote is False else shipping(self.loaded, remote)

    def _trace_options(self, remote: Remote) -> dict[str, Any]:
        return {} if remote is False else trace_options(self.model, remote)
