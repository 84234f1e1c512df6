"""Analysis interventions of the paper's Section 4: ablation, contribution, head scores, attention maps.

Each is a frozen dataclass whose `hooks(ctx)` returns `Hook`s in the shared
vocabulary, so they compose with FindSinks, VAR, PAI and each other in one
stack. The ones that need sink sets read `ctx.sinks[layer]`: put `FindSinks()`
first. Read-only members (`writes=False`) leave what they measure in
`ctx.records` (one entry per layer, tensors on the CPU, prompt only)::

    stack = [FindSinks(), HeadScores(), AttentionMaps(layers=[10, 11, 12])]
    ctx = NnsightRunner(lm).forward(inputs, stack).ctx
    ctx.records["head_scores"][10]         # [batch, head]: visual non-sink ratio over text queries
    ctx.records["attention_maps"][10]      # [batch, key]: attention each key gets from the text
    NnsightRunner(lm).generate(inputs, [FindSinks(), SinkAblation()])   # visual sinks removed
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

# ops by name, not the package: a request shipped to NDIF carries these functions by value
from sinklens.ops import (
    attention_contribution,
    contribution_sum,
    head_value_outputs,
    mask_keys,
    mean_head_ratio,
    mean_query_attention,
    random_keys_each,
    visual_nonsink_ratio,
)
from sinklens.errors import ParameterError
from sinklens.hook_points import block
from sinklens.interventions import params
from sinklens.run import Hook, RunContext, resolve_layers, write_rows

KeySet = Literal["visual_sinks", "sinks", "text_sinks"]
QuerySet = Literal["text", "last"]
KEY_SETS: tuple[str, ...] = get_args(KeySet)
QUERY_SETS: tuple[str, ...] = get_args(QuerySet)


# --- ablation ------------------------------------------------------------------------------------


def _sink_keys(ctx: RunContext, layer: int, keys: KeySet, who: str) -> Tensor:
    sinks = ctx.layer_sinks(layer, who)
    image = ctx.image.mask.to(sinks.device)
    if keys == "visual_sinks":
        return sinks & image
    if keys == "text_sinks":
        return sinks & ~image
    return sinks


@dataclass(frozen=True, kw_only=True)
class SinkAblation:
    """Remove the attention of text queries to a sink set, pre-softmax (-inf), in the chosen layers.

    `keys`: "visual_sinks" (the paper's Fig. 3b, default), "sinks" (visual and
    text) or "text_sinks", from the sink sets FindSinks found at each layer;
    or `positions`, fixed prompt positions, for any key set. Queries are the
    text after the image (prefill) and every generated token (decoding); a
    query that would have no key left keeps its scores (exempt). Layers
    default to every layer. Records `ctx.records["ablation"]`: per layer, the
    number of keys removed per prompt.
    """

    # shared image prefixes (sinklens.run.prefixes): masks keys for the text queries after the image only, with
    # sinks found per token
    prefix_safe: ClassVar[bool] = True

    keys: KeySet = "visual_sinks"
    positions: Sequence[int] | None = None
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        params.one_of("keys", self.keys, KEY_SETS)
        if self.positions is not None and any(p < 0 for p in self.positions):
            raise ParameterError(f"positions must be prompt positions >= 0, got {list(self.positions)}")

    def hooks(self, ctx: RunContext) -> list[Hook]:
        layers = resolve_layers(self.layers, ctx.n_layers, range(ctx.n_layers))
        if self.positions is not None:
            bad = [p for p in self.positions if p >= ctx.prompt_length]
            if bad:
                raise ParameterError(f"positions {bad} are past the prompt's {ctx.prompt_length} tokens")
        # plain values, not self: a run shipped to NDIF carries these functions by value
        chosen = partial(_listed_keys, keys=self.keys, positions=None if self.positions is None else tuple(self.positions))
        return [Hook(block(layer, "attn.hook_attn_scores"), partial(_ablate, layer=layer, chosen=chosen), query_rows=True)
                for layer in layers]  # fmt: skip


def _listed_keys(ctx: RunContext, layer: int, *, keys: KeySet, positions: tuple[int, ...] | None) -> Tensor:
    if positions is None:
        return _sink_keys(ctx, layer, keys, "SinkAblation")
    mask = torch.zeros_like(ctx.image.mask)
    mask[:, list(positions)] = True
    return mask


@dataclass(frozen=True, kw_only=True)
class RandomAblation:
    """The control of SinkAblation: as many random image tokens, re-drawn per layer from a seed.

    At each layer, every prompt loses as many image keys as it has keys in the
    sink set `keys` there (or `count`, if given), drawn uniformly from its image
    tokens that are not visual sinks (so the two ablations never overlap; with
    `count` and no FindSinks in the stack, from all of its image tokens).
    The draw at layer l uses a generator seeded with (seed, l), one per prompt,
    over the prompt's own positions: the same seed gives the same keys, a prompt
    draws the same keys in any batch as alone, and layers get different ones.
    Drawn once on the prompt and reused while decoding. Records
    `ctx.records["random_ablation"]` (layer -> the drawn key mask, `[batch, pos]`).
    """

    # shared image prefixes (sinklens.run.prefixes): its draw is made per prompt, over the prompt's own positions,
    # in the pass that reaches the text queries: not declared safe until it is drawn from the prefix alone
    prefix_safe: ClassVar[bool] = False

    seed: int = 0
    keys: KeySet = "visual_sinks"
    count: int | None = None
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        params.one_of("keys", self.keys, KEY_SETS)
        if self.count is not None:
            params.integer_in("count", self.count, 0, 1 << 30)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ParameterError(f"seed must be an integer >= 0, got {self.seed!r}")

    def hooks(self, ctx: RunContext) -> list[Hook]:
        layers = resolve_layers(self.layers, ctx.n_layers, range(ctx.n_layers))
        chosen = partial(_random_keys_at, seed=self.seed, keys=self.keys, count=self.count)
        return [Hook(block(layer, "attn.hook_attn_scores"), partial(_ablate, layer=layer, chosen=chosen), query_rows=True)
                for layer in layers]  # fmt: skip


def _random_keys_at(ctx: RunContext, layer: int, *, seed: int, keys: KeySet, count: int | None) -> Tensor:
    if ctx.prefill or layer not in ctx.records.get("random_ablation", {}):
        image = ctx.image.mask
        if count is None:
            counts = _sink_keys(ctx, layer, keys, "RandomAblation").to(image.device).sum(-1)
        else:
            counts = torch.full((image.shape[0],), count, device=image.device)
        # never a visual sink, whatever `keys` counts (text sinks too), wherever FindSinks found them
        sinks = ctx.sinks.get(layer)
        pool = image if sinks is None else image & ~sinks.to(image.device)
        own = ctx.attention_mask.to(image.device)  # each prompt draws on its own positions: as alone, in any batch
        drawn = random_keys_each(pool.cpu(), counts.cpu(), own.cpu(), seed * 100_003 + layer).to(image.device)
        ctx.found.add("random_ablation", drawn, layer=layer)
    return ctx.records["random_ablation"][layer]


def _ablate(scores: Tensor, ctx: RunContext, *, layer: int, chosen: Any) -> Tensor:
    prompt_keys = chosen(ctx, layer)
    keys = ctx.keys(prompt_keys, scores.shape[-1], scores.device)
    rows = ctx.query_rows(scores)
    if ctx.prefill:  # counted over the prompt: a sliding-window layer's cache may hold fewer keys than it
        ctx.found.add("ablation", prompt_keys.sum(-1).cpu(), layer=layer)
    return write_rows(scores, rows, mask_keys(rows.of(scores), keys, rows.queries))


# --- attention contribution ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AttentionContribution:
    """c_ij = || a_ij W_O^h W_V^h x~_j || per layer, head, text query and key (SPEC section 4; prefill).

    Keeps `attn.hook_v` (GQA: each key/value head serves its group of query
    heads) and the text rows of `attn.hook_pattern`, and computes at
    `attn.hook_z`, where the backend hands it W_O: the weight of the module that
    point feeds (o_proj), read next to the model (on the server in a remote
    run), so the intervention holds only its layers (default: every layer).
    Records, per layer, in ctx.records:
    - "contribution": `[batch, head, query, key]` norms for the query rows from
      the earliest text start (fp32, CPU);
    - "contribution_output": `[batch, query, d_model]`, the sum of the vectors
      a_ij W_O^h v_j over heads and keys: the attention output (o_proj's output),
      as a check that the pieces add up. An output projection with a bias is
      refused: the bias is no key's contribution.
    """

    # shared image prefixes (sinklens.run.prefixes): reads the text queries' rows only
    prefix_safe: ClassVar[bool] = True

    layers: Sequence[int] | None = None

    def hooks(self, ctx: RunContext) -> list[Hook]:
        layers = resolve_layers(self.layers, ctx.n_layers, range(ctx.n_layers))
        hooks = []
        for layer in layers:
            hooks += [
                Hook(block(layer, "attn.hook_v"), partial(_keep, key="_values", layer=layer, first_row=False),
                     prefill_only=True, writes=False),
                Hook(block(layer, "attn.hook_pattern"), partial(_keep, key="_patterns", layer=layer, first_row=True),
                     prefill_only=True, writes=False, query_rows=True),
                Hook(block(layer, "attn.hook_z"), partial(_contribution, layer=layer),
                     prefill_only=True, writes=False, weights=True),
            ]  # fmt: skip
        return hooks


def _keep(tensor: Tensor, ctx: RunContext, *, key: str, layer: int, first_row: bool) -> None:
    """Keep a copy until hook_z of this layer (a copy: a later member at this point may edit in place)."""
    kept = ctx.query_rows(tensor).of(tensor) if first_row else tensor
    ctx.scratch.setdefault(key, {})[layer] = kept.detach().to(torch.float32, copy=True)


def _take(ctx: RunContext, key: str, layer: int) -> Tensor:
    return ctx.scratch[key].pop(layer)


def _contribution(z: Tensor, ctx: RunContext, *, layer: int, weight: Tensor, bias: Tensor | None) -> None:
    if bias is not None:
        raise ParameterError(
            f"layer {layer}'s attention output projection has a bias; AttentionContribution's decomposition "
            "(per-key vectors that sum to the attention output) assumes none: use it on a model without one"
        )
    if weight.shape[-1] != z.shape[-1]:
        raise ParameterError(
            f"layer {layer}: the module fed by attn.hook_z has a weight of shape {tuple(weight.shape)}, but "
            f"hook_z holds {z.shape[-1]} features; it must be the attention's output projection (check the "
            "catalogue's attn.hook_z path)"
        )
    value, rows = _take(ctx, "_values", layer), _take(ctx, "_patterns", layer)
    outputs = head_value_outputs(value, weight.to(value.device, torch.float32), rows.shape[1])
    ctx.found.add("contribution", attention_contribution(rows, outputs).cpu(), layer=layer)
    ctx.found.add("contribution_output", contribution_sum(rows, outputs).cpu(), layer=layer)


# --- head scores and attention maps --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HeadScores:
    """Visual non-sink ratio r per layer and head, averaged over the text queries (SPEC section 2; prefill).

    Records per layer `ctx.records["head_scores"][l]` (`[batch, head]`) and
    `ctx.records["head_image_attention"][l]` (image attention s, averaged the
    same way). A head that gives a query no image attention scores r = 0 there.
    """

    # shared image prefixes (sinklens.run.prefixes): reads the text queries' rows only
    prefix_safe: ClassVar[bool] = True

    layers: Sequence[int] | None = None

    def hooks(self, ctx: RunContext) -> list[Hook]:
        layers = resolve_layers(self.layers, ctx.n_layers, range(ctx.n_layers))
        return [Hook(block(layer, "attn.hook_pattern"), partial(_head_scores, layer=layer),
                     prefill_only=True, writes=False, query_rows=True) for layer in layers]  # fmt: skip


def _head_scores(pattern: Tensor, ctx: RunContext, *, layer: int) -> None:
    sinks = ctx.layer_sinks(layer, "HeadScores")
    rows = ctx.query_rows(pattern)
    n_keys = pattern.shape[-1]
    image = ctx.keys(ctx.image.mask, n_keys, pattern.device)
    sink = ctx.keys(sinks, n_keys, pattern.device)
    ratio, image_attention = visual_nonsink_ratio(rows.of(pattern).float(), image, sink)
    queries = rows.queries
    ctx.found.add("head_scores", mean_head_ratio(ratio, queries).cpu(), layer=layer)
    ctx.found.add("head_image_attention", mean_head_ratio(image_attention, queries).cpu(), layer=layer)


@dataclass(frozen=True, kw_only=True)
class AttentionMaps:
    """Attention each key receives from the text, averaged over chosen heads, per layer (prefill).

    `queries="text"` averages over every text query after the image, `"last"`
    takes the last prompt token only (the one that predicts the answer). Records
    `ctx.records["attention_maps"][l]`, `[batch, pos]` over every prompt key;
    `image_map(ctx, layers)` puts the image tokens on the patch grid.
    """

    # shared image prefixes (sinklens.run.prefixes): reads the text queries' rows (or the prompt's last token)
    # only
    prefix_safe: ClassVar[bool] = True

    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    queries: QuerySet = "text"

    def __post_init__(self) -> None:
        params.one_of("queries", self.queries, QUERY_SETS)

    def hooks(self, ctx: RunContext) -> list[Hook]:
        layers = resolve_layers(self.layers, ctx.n_layers, range(ctx.n_layers))
        heads = tuple(self.heads) if self.heads is not None else None
        return [Hook(block(layer, "attn.hook_pattern"), partial(_attention_map, layer=layer, heads=heads,
                     last=self.queries == "last"), prefill_only=True, writes=False, query_rows=True)
                for layer in layers]  # fmt: skip


def _attention_map(pattern: Tensor, ctx: RunContext, *, layer: int, heads: tuple[int, ...] | None, last: bool) -> None:
    n_heads = pattern.shape[1]
    if heads is not None and any(not 0 <= h < n_heads for h in heads):
        raise ParameterError(f"heads {list(heads)} do not exist; layer {layer} has heads 0..{n_heads - 1}")
    rows = ctx.query_rows(pattern)
    queries = rows.queries
    if last:
        queries = torch.zeros_like(queries)
        queries[:, -1] = True
    chosen = None
    if heads is not None:
        chosen = torch.zeros(n_heads, dtype=torch.bool, device=pattern.device)
        chosen[list(heads)] = True
    ctx.found.add("attention_maps", mean_query_attention(rows.of(pattern).float(), queries, chosen).cpu(), layer=layer)


def image_map(ctx: RunContext, layers: Sequence[int], prompt: int = 0, image: int = 0) -> Tensor:
    """The recorded attention maps of `layers`, averaged, on the patch grid of one image: `[row, col]`.

    For an image of several tiles, the largest tile (LLaVA-NeXT's tiles, InternVL's first tile).
    """
    missing = [layer for layer in layers if layer not in ctx.records.get("attention_maps", {})]
    if missing:
        raise ParameterError(f"no attention map recorded at layers {missing}: run AttentionMaps(layers=...) there")
    mean = torch.stack([ctx.records["attention_maps"][layer][prompt] for layer in layers]).mean(0)
    grid = ctx.image.images_of(prompt)[image]
    tile = max(grid.tiles, key=lambda t: t.positions.numel())
    return tile.gather(mean)
