"""Shared image prefixes through nnsight: each distinct prefix once, every question from its cache.

`NnsightRunner.generate(..., prefixes=store)` comes here when the stack is
prefix-safe and the run is local (`sinklens.run.prefixes`). The steps:

1. `split_prompts` cuts every row of the run (VCD's noised copies included)
   into its image prefix and its suffix;
2. the prefixes the store lacks run under the stack in batches of one length
   and one pass (no padding enters them; `RunSpec.is_prefix`: no row is a
   query, and the logits' hooks are left out, since a prefix's logits are not
   used), and the store keeps each one's KV cache and positional findings;
3. the batch continues from a fresh cache of its prefixes
   (`[padding | prefix | padding | suffix]`, `RunSpec.first_position`), the
   stack acting on the suffix rows at step 0 and on each new token after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor

from sinklens.models.prefixes import PromptParts, batch_prefixes, continuation, continue_positions, split_prompts
from sinklens.run import Members, RunContext, RunInputs, RunSpec, finish_generation, make_context, plan
from sinklens.run.prefixes import (
    CachedPrefix, PrefixStore, Sharing, continuation_findings, group_by_length, prefix_findings, stack_kv,
)

if TYPE_CHECKING:
    from sinklens.models.loaded import LoadedModel
    from sinklens.run import GenerationResult, Plan


class CachingRunner(Protocol):
    """What sharing needs of a backend (`NnsightRunner` is one): a traced forward that returns its KV
    cache, and greedy decoding from a given cache. Named here so this module does not import its caller."""

    loaded: LoadedModel

    def trace(
        self, inputs: Mapping[str, Tensor], ctx: RunContext, points: Plan, **model_kwargs: Any
    ) -> tuple[Tensor, Any]: ...

    def decode(
        self, inputs: Mapping[str, Tensor], ctx: RunContext, interventions: Members, steps: int, **model_kwargs: Any
    ) -> list[Tensor]: ...


def generate_shared(
    runner: CachingRunner, run: RunInputs, interventions: Members, steps: int, store: PrefixStore
) -> GenerationResult:
    """Greedy generation of a run's prompts, each continuing from its image prefix's cache."""
    from transformers import DynamicCache

    loaded = runner.loaded
    parts = split_prompts(loaded.catalogue.grid, run.inputs, run.ctx.image)
    keys = [part.key for part in parts]
    missing = store.missing(keys)
    first = {}
    for row, part in enumerate(parts):
        first.setdefault(part.key, (row, part))
    pass_of = _pass_of_rows(run.ctx, len(parts))
    for length_group in group_by_length(missing, {key: first[key][1].prefix_length for key in missing}):
        for pass_name in dict.fromkeys(pass_of[first[key][0]] for key in length_group):
            group = [first[key][1] for key in length_group if pass_of[first[key][0]] == pass_name]
            _run_prefixes(runner, group, interventions, store, keep=keys, pass_name=pass_name, passes=run.ctx.passes)
    prefixes = store.take(keys)
    layout = continuation(parts, loaded.tokenizer.pad_token_id)
    ctx = _continuation_context(runner, run, layout, prefixes)
    cache = DynamicCache(ddp_cache_data=stack_kv(prefixes, layout.cached), config=loaded.model.config)
    positions = continue_positions(loaded.model, layout)
    logits = runner.decode(layout.inputs, ctx, interventions, steps, past_key_values=cache, **positions)
    result = finish_generation(loaded, RunInputs(layout.inputs, run.n_prompts, ctx), logits)
    return replace(result, sharing=Sharing(True, prompts=len(parts), computed=len(missing), reused=len(parts) - len(missing)))


def layout_refusal(loaded: Any, run: RunInputs) -> str:
    """Why a batch cannot continue from shared prefixes exactly ("" when it can).

    A continuation pads between prefix and suffix where suffixes differ in
    length. Full attention masks that padding out; a sliding-window layer
    counts it as keys of its window (transformers' window is over cache
    slots), so such a row would see fewer real keys than in its whole run.
    """
    if loaded.sliding_window is None:
        return ""
    lengths = {part.suffix_length for part in split_prompts(loaded.catalogue.grid, run.inputs, run.ctx.image)}
    if len(lengths) == 1:
        return ""
    return (f"{loaded.name} has sliding-window layers, whose window would count the padding between a prefix and a "
            f"shorter suffix (suffix lengths {sorted(lengths)} here): the batch runs whole; ask one question at a time, "
            "or questions of one length together, to share")  # fmt: skip


def _pass_of_rows(ctx: RunContext, n_rows: int) -> list[str]:
    """The pass each row of the run belongs to ("" when the stack runs one pass)."""
    names = [""] * n_rows
    for name, rows in ctx.passes.items():
        for row in range(n_rows)[rows]:
            names[row] = name
    return names


def _run_prefixes(
    runner: CachingRunner, group: list[PromptParts], interventions: Members, store: PrefixStore, *, keep: list[str],
    pass_name: str, passes: Any,
) -> None:
    """Run prefixes of one length (and one pass) under the stack; keep each one's cache and findings."""
    loaded = runner.loaded
    inputs = batch_prefixes(group)
    n = len(group)
    # the batch holds one pass only: its rows are all of them, every other pass has none here
    named = {name: slice(0, n) if name == pass_name else slice(n, n) for name in passes}
    ctx = RunContext(replace(make_context(loaded, inputs).spec, is_prefix=True, passes=named))
    points = tuple(point for point in plan(interventions, ctx) if point.point.kind != "hook_logits")
    _, cache = runner.trace(inputs, ctx, points, use_cache=True, logits_to_keep=1)
    layers = [(keys, values) for keys, values, *_ in cache]
    for row, part in enumerate(group):
        kv = tuple((keys[row : row + 1].clone(), values[row : row + 1].clone()) for keys, values in layers)
        prefix = CachedPrefix(part.prefix_length, kv, dict(part.prefix), prefix_findings(ctx.found, row, part.prefix_length))
        store.put(part.key, prefix, keep=keep)


def _continuation_context(runner: CachingRunner, run: RunInputs, layout: Any, prefixes: list[CachedPrefix]) -> RunContext:
    """The context of a continuation: spans over the full layout, the prefixes' findings, the suffix rows held."""
    loaded = runner.loaded
    inputs = {**layout.inputs, **layout.images}
    spans = loaded.image_spans(inputs)
    spec = RunSpec.of(spans, layout.inputs["attention_mask"], n_layers=loaded.n_layers, sink_dims=loaded.sink_dims,
                      d_model=loaded.d_model, default_tau=loaded.default_tau, model_name=loaded.name,
                      passes=run.ctx.passes, first_position=layout.cached)  # fmt: skip
    return RunContext(spec, found=continuation_findings(prefixes, layout.cached))
