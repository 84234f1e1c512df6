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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

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
from sinklens.errors import CatalogueError
from sinklens.interventions.base import Hook, Members, RunContext, apply_point, ordered_hooks
from sinklens.models.catalogue import HookCatalogue
from sinklens.models.loading import LoadedModel

__all__ = ["ForwardResult", "GenerationResult", "NnsightRunner", "attach", "make_context", "run_hooks", "wrap"]


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


def _envoy(root: Any, module_path: str, hook_name: str, catalogue: HookCatalogue) -> Any:
    node = root
    for part in module_path.split("."):
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, KeyError) as e:
            raise CatalogueError(
                f"{catalogue.source}: the path of {hook_name!r} ({module_path}) fails at {part!r} on the "
                f"installed transformers: {e}. Fix the path in the catalogue file."
            ) from e
    return node


def _run_point(root: Any, catalogue: HookCatalogue, hooks: Sequence[Hook], ctx: RunContext) -> None:
    """Read one hook point once, apply its functions in order, write back if any returned a tensor."""
    name = hooks[0].name
    module_path, attribute, index = _split(catalogue.nnsight_path(hooks[0].point))
    envoy = _envoy(root, module_path, name, catalogue)
    whole = getattr(envoy, attribute)
    value = whole[index] if index is not None else whole
    result = apply_point(hooks, value, ctx)
    if result is not None:
        if index is not None:
            parts = list(whole)
            parts[index] = result
            result = type(whole)(parts)
        setattr(envoy, attribute, result)


def run_hooks(root: Any, catalogue: HookCatalogue, hooks: Sequence[Hook], ctx: RunContext) -> None:
    """Apply ordered hooks inside a trace, for the step in `ctx.step`."""
    # a point whose hooks are all prefill-only is not even read while decoding
    active = [hook for hook in hooks if ctx.prefill or not hook.prefill_only]
    for _, group in groupby(active, key=lambda hook: hook.name):
        _run_point(root, catalogue, list(group), ctx)


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
    """
    ctx = ctx or make_context(loaded, inputs)
    hooks = ordered_hooks(interventions, ctx)
    if tracer is None or steps is None:
        run_hooks(model, loaded.catalogue, hooks, ctx)
        return ctx
    for step in tracer.iter[:steps]:
        ctx.step = step
        run_hooks(model, loaded.catalogue, hooks, ctx)
    return ctx


class NnsightRunner:
    """One-call runs of a stack on a loaded model through nnsight."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = wrap(loaded)

    def forward(self, inputs: Mapping[str, Tensor], interventions: Members = ()) -> ForwardResult:
        """One forward pass over the prompt with the stack applied."""
        prepared = prepare(self.loaded, inputs, interventions)
        with torch.no_grad(), self.model.trace(**prepared.inputs):
            attach(self.model, self.loaded, interventions, prepared.inputs, ctx=prepared.ctx)
            logits = self.model.output.logits.save()
        return ForwardResult(logits=logits[: prepared.n_prompts], ctx=prepared.ctx)

    def generate(
        self,
        inputs: Mapping[str, Tensor],
        interventions: Members = (),
        *,
        max_new_tokens: int = 16,
    ) -> GenerationResult:
        """Greedy decoding with the KV cache; the stack acts in prefill and at every step."""
        prepared = prepare(self.loaded, inputs, interventions)
        recorder = Recorder()
        with torch.no_grad(), self.model.generate(
            **prepared.inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=self.loaded.tokenizer.pad_token_id,
        ) as tracer:
            attach(
                self.model, self.loaded, [interventions, recorder], prepared.inputs,
                tracer=tracer, steps=max_new_tokens, ctx=prepared.ctx,
            )
        return finish_generation(self.loaded, prepared, recorder)
