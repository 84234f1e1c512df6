"""Record the attention rows the explorer shows: one generate run without VAR, one with it.

Only public sinklens names are used (`sinklens.Hook`, `FindSinks`, `VAR`,
`NnsightRunner`, `result.ctx`). Each run carries read-only hooks at every
layer's `attn.hook_pattern` that keep the rows of the queries the page offers:
the prompt's text tokens from the first image on, and every generated token
fed back while decoding. In the VAR run one hook sits before VAR and one after
it at the same point (a stack runs in list order at one point), so the page
shows the pattern the model used after VAR's edit, and which rows VAR changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

import sinklens as sl


@dataclass(frozen=True)
class Recorded:
    """One run's attention rows and sinks, on one key axis: the prompt, then the generated tokens.

    `rows[q, l, h, k]` is the attention of query `queries[q]` on key position
    `k` in head `h` of layer `l` (zero for keys the query cannot see).
    `before` holds the same rows read before VAR's edit (VAR runs only).
    """

    generated: list[int]  # token ids the run generated (up to, not including, the first EOS)
    queries: list[int]  # positions on the key axis (prompt positions, then prompt_length + k)
    rows: Tensor  # [query, layer, head, key] float32
    before: Tensor | None  # same layout, before VAR's edit
    phi: Tensor  # [layer, prompt pos] float32
    sinks: Tensor  # [layer, prompt pos] bool


def _keep_rows(pattern: Tensor, ctx: Any, *, layer: int, key: str, prompt_queries: tuple[int, ...]) -> None:
    # prefill: the rows of the chosen prompt queries; decoding: the one new row (the token fed back)
    rows = pattern[0, :, list(prompt_queries), :] if ctx.prefill else pattern[0, :, -1:, :]
    # clone: VAR edits the pattern in place after this hook, and .float().cpu() of a CPU fp32 view is that view
    ctx.found.add(key, {"layer": layer, "step": ctx.step, "rows": rows.detach().float().cpu().clone()})


def _recorders(n_layers: int, key: str, prompt_queries: tuple[int, ...]) -> list[Any]:
    return [
        sl.Hook(f"blocks.{layer}.attn.hook_pattern",
                partial(_keep_rows, layer=layer, key=key, prompt_queries=prompt_queries), writes=False)
        for layer in range(n_layers)
    ]  # fmt: skip


def prompt_queries(ctx_image: Any, attention_mask: Tensor) -> tuple[int, ...]:
    """Prompt positions offered as queries: text (not image-region) tokens from the first image on."""
    region = ctx_image.mask if ctx_image.region is None else ctx_image.region
    first = int(region[0].nonzero()[0])
    keep = ~region[0] & attention_mask[0].bool()
    return tuple(int(p) for p in keep.nonzero().flatten().tolist() if p >= first)


def _assemble(records: list[dict[str, Any]], n_layers: int, n_prompt_queries: int, n_steps: int,
              key_length: int) -> Tensor:  # fmt: skip
    """[query, layer, head, key]: prefill rows first, then one row per decoding step 1..n_steps-1."""
    n_heads = records[0]["rows"].shape[0]
    out = torch.zeros(n_prompt_queries + max(n_steps - 1, 0), n_layers, n_heads, key_length)
    for record in records:  # one entry per (layer, step): not per head or token
        rows = record["rows"][:, :, :key_length]  # [head, q, k]
        step = record["step"]
        first = 0 if step == 0 else n_prompt_queries + step - 1
        if first >= out.shape[0]:
            continue  # a step after the first EOS: its query is no token the page shows
        out[first : first + rows.shape[1], record["layer"], :, : rows.shape[2]] = rows.permute(1, 0, 2)
    return out


def record_run(runner: Any, inputs: Any, find: Any, var: Any | None, *, max_new_tokens: int) -> Recorded:
    """Generate with FindSinks (and VAR if given), keeping every layer's attention rows of the offered queries."""
    loaded = runner.loaded
    n_layers = loaded.n_layers
    spans = loaded.check_inputs(inputs)
    queries = prompt_queries(spans, inputs["attention_mask"])
    after = _recorders(n_layers, "explore_rows", queries)
    if var is None:
        stack = [find, *after]
    else:
        stack = [find, *_recorders(n_layers, "explore_before", queries), var, *after]
    result = runner.generate(inputs, stack, max_new_tokens=max_new_tokens)
    ctx = result.ctx
    generated = list(result.tokens[0])
    prompt_length = ctx.prompt_length
    # the query of generated token k is fed at step k + 1; the last one chosen is never fed back
    n_steps = min(len(generated), max_new_tokens - 1) + 1
    key_length = prompt_length + len(generated)
    rows = _assemble(ctx.records["explore_rows"], n_layers, len(queries), n_steps, key_length)
    before = None
    if var is not None:
        before = _assemble(ctx.records["explore_before"], n_layers, len(queries), n_steps, key_length)
    query_positions = list(queries) + [prompt_length + k for k in range(n_steps - 1)]
    phi = torch.stack([ctx.phi[layer][0].float().cpu() for layer in range(n_layers)])
    sinks = torch.stack([ctx.sinks[layer][0].cpu() for layer in range(n_layers)])
    return Recorded(generated, query_positions, rows, before, phi, sinks)
