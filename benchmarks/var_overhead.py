"""How much slower is a forward pass with VAR than without, through nnsight and through TransformerLens?

Measured: the wall time of one nnsight trace of a LLaVA-1.5-shaped model with
FindSinks + VAR attached, divided by the wall time of the same trace with
nothing attached ("plain": only the logits are saved). Then the same on the
TransformerLens backend, in the same run: a `Stack(FindSinks, VAR)` through
`bridge.run_with_hooks` against a plain bridge forward (`bridge(...)`, no
hooks), on a TransformerBridge built over the same model after the nnsight
arms are done (in place: one copy of the weights). Two cases each:

- prefill: the whole prompt (651 tokens, 576 of them image tokens) at once;
- decode_step: one generated token against the KV cache of that prompt, with
  VAR only (FindSinks is prefill-only; the sink sets come from a prefill, as in
  generation) and `ctx.step = 1` so VAR treats the query as a generated token.
  The cache is cropped back to the prompt after every run, so every repetition
  attends over the same 652 keys.

Why this shape: VAR's work grows with the attention pattern
(heads x queries x keys) while the model's work is dominated by the weight
matrices, so the ratio depends on both. The model is a real
`LlavaForConditionalGeneration` whose text model has LLaVA-1.5-7B's layer shape
(d_model 4096, 32 heads without GQA, MLP 11008, vocab 32000) but only 2
decoder layers, and a tiny CLIP tower (hidden 64) at 336 px / patch 14, which
gives LLaVA-1.5's 576 image tokens. Random weights (fixed seed), fp32, eager
attention, CPU, nothing downloaded. Per layer, model and VAR costs have the 7B
model's proportions; with 2 layers instead of 32 the embedding, the LM head and
nnsight's fixed per-trace cost weigh more than they would in the real model.

VAR acts on both layers: its default layers (2..L-2) are empty for L = 2, so the
stack is FindSinks(layers=[0, 1]) + VAR(layers=[0, 1]). The sink is planted: the
BOS embedding gets SINK_VALUE in dimension SINK_DIM (2533, one of LLaMA-2-7B's
massive-activation dimensions). That gives BOS phi ~ 64 at layer 0 and ~ 48 at
layer 1 against phi < 3 for every other token, so FindSinks(tau=20, the library
default) marks exactly BOS in both layers. Random weights spread attention
almost evenly, so every (head, text query) pair is image-centric and VAR edits
every row it reads: the most work it can do on this shape. The JSON reports the
sinks found and the image-centric counts so this can be checked.

Control arm "identity_hook": a hook on the same pattern points that returns the
pattern unchanged, so nnsight's cost of reaching into the attention function
and writing back is separated from VAR's tensor math. "var_hook_alone" times
VAR's hook function on a pattern of each shape outside any model.

The TransformerLens section has the same arms and the same cases (its decode
step feeds the bridge the prompt's HF cache through `past_key_values`, with the
hooks' step counter starting at 1). Targets: 1.10 for nnsight, 1.15 for
TransformerLens.

Arms run interleaved (plain, identity hook, VAR; the order rotates every round)
to cancel drift. Reported: medians of wall time, the ratio of the medians, the
median of the per-round ratios (robust to load that changes between rounds),
and the same ratio in process CPU time (less sensitive to other processes on a
shared machine). Run:

    python benchmarks/var_overhead.py [--repeats 5] [--decode-repeats 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sinklens.backends.nnsight_backend import attach, make_context, wrap
from sinklens.hook_points import block
from sinklens.interventions.base import Hook, Intervention, RunContext
from sinklens.interventions.sinks import FindSinks
from sinklens.interventions.var import VAR
from sinklens.models.loading import LoadedModel, from_hf
from sinklens.models.tiny import tiny_tokenizer

SEED = 0
TARGET_RATIO = 1.10
TL_TARGET_RATIO = 1.15

# text model: LLaVA-1.5-7B (LLaMA-2-7B) layer shape, 2 layers
D_MODEL = 4096
N_HEADS = 32
D_MLP = 11008
VOCAB = 32000
N_LAYERS = 2
# vision: a small CLIP tower at LLaVA-1.5's resolution -> 24 x 24 = 576 image tokens
IMAGE_SIZE = 336
PATCH_SIZE = 14
VISION_HIDDEN = 64
VISION_LAYERS = 2
# prompt: BOS, text, image, text (LLaVA-1.5's chat template puts a few tokens before the image)
N_TEXT_BEFORE = 4
N_TEXT_AFTER = 70

LAYERS = (0, 1)
SINK_DIM = 2533
SINK_VALUE = 200.0
TAU = 20.0

ARMS = ("plain", "identity_hook", "var")


@dataclass(frozen=True)
class Setup:
    loaded: LoadedModel
    model: Any  # the nnsight TransformersModel around loaded.model
    inputs: dict[str, Tensor]

    @property
    def prompt_length(self) -> int:
        return self.inputs["input_ids"].shape[1]


# ---- model and prompt -------------------------------------------------------------------------


def build_model() -> LoadedModel:
    """The 2-layer LLaVA-1.5-7B-shaped model with a planted BOS sink, described by sinklens."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = tiny_tokenizer()
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=2 * VISION_HIDDEN,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=VISION_HIDDEN,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[text.bos_token_id, SINK_DIM] = SINK_VALUE
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
    )
    return from_hf(model, processor, name="llava-1.5-7b-shape-2-layers")


def build_inputs(loaded: LoadedModel) -> dict[str, Tensor]:
    """BOS, 4 text tokens, 576 image tokens, 70 text tokens; random pixels.

    Built by hand rather than through the chat template: the word-level test
    tokenizer's vocabulary is too small for a natural 70-token question, and
    only the token count and the image positions matter here.
    """
    tokenizer = loaded.tokenizer
    words = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]
    generator = torch.Generator().manual_seed(SEED)

    def text(n: int) -> list[int]:
        return [words[i] for i in torch.randint(len(words), (n,), generator=generator).tolist()]

    rows, cols = loaded.grid
    ids = [tokenizer.bos_token_id, *text(N_TEXT_BEFORE), *[loaded.image_token_id] * (rows * cols), *text(N_TEXT_AFTER)]
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
    }


def var_stack() -> list[Intervention]:
    return [FindSinks(dims=(SINK_DIM,), tau=TAU, layers=list(LAYERS)), VAR(layers=list(LAYERS))]


@dataclass(frozen=True)
class IdentityHook:
    """Reads the attention pattern and hands it back unchanged: nnsight's cost without VAR's math."""

    def hooks(self, ctx: RunContext) -> list[Hook]:
        return [Hook(block(layer, "attn.hook_pattern"), _unchanged) for layer in LAYERS]


def _unchanged(pattern: Tensor, ctx: RunContext) -> Tensor:
    return pattern


# ---- the arms: one traced forward each --------------------------------------------------------


def trace_logits(
    setup: Setup, inputs: Mapping[str, Any], interventions: list[Intervention], ctx: RunContext | None
) -> Tensor:
    """One nnsight trace; with interventions, `attach` them (ctx made before the block)."""
    with torch.no_grad(), setup.model.trace(**inputs):
        if interventions:
            attach(setup.model, setup.loaded, interventions, inputs, ctx=ctx)
        logits = setup.model.output.logits.save()
    return logits


def prefill_arms(setup: Setup) -> dict[str, Callable[[], Tensor]]:
    """The whole prompt; each hooked arm makes its own context, as a user does per prompt."""

    def arm(make_interventions: Callable[[], list[Intervention]]) -> Callable[[], Tensor]:
        def run() -> Tensor:
            interventions = make_interventions()
            ctx = make_context(setup.loaded, setup.inputs) if interventions else None
            return trace_logits(setup, setup.inputs, interventions, ctx)

        return run

    return {"plain": arm(list), "identity_hook": arm(lambda: [IdentityHook()]), "var": arm(var_stack)}


def prefill_with_cache(setup: Setup) -> tuple[RunContext, Any]:
    """One FindSinks + VAR prefill with use_cache=True: the filled context and the prompt's DynamicCache."""
    ctx = make_context(setup.loaded, setup.inputs)
    with torch.no_grad(), setup.model.trace(**setup.inputs, use_cache=True):
        attach(setup.model, setup.loaded, var_stack(), setup.inputs, ctx=ctx)
        cache = setup.model.output.past_key_values.save()
    if cache.get_seq_length() != setup.prompt_length:
        raise RuntimeError(f"prefill cache holds {cache.get_seq_length()} tokens, expected {setup.prompt_length}")
    return ctx, cache


def crop_to(cache: Any, length: int) -> None:
    """Drop the cached tokens past `length`. A negative count (tokens to remove) works on
    transformers 4.x and 5.x; 5.x refuses the legacy positive `crop(max_length)`."""
    extra = cache.get_seq_length() - length
    if extra:
        cache.crop(-extra)


def decode_arms(setup: Setup, ctx: RunContext, cache: Any) -> dict[str, Callable[[], Tensor]]:
    """One next token against the prompt's cache, reusing the prefill's context (and its sink sets)."""
    length = setup.prompt_length
    inputs = {
        "input_ids": setup.inputs["input_ids"][:, -1:].clone(),  # any text token will do
        "attention_mask": torch.ones(1, length + 1, dtype=torch.long),
        "past_key_values": cache,
        "use_cache": True,
    }
    ctx.step = 1  # a generated token: VAR acts on every query; FindSinks (prefill-only) would be skipped

    def arm(interventions: list[Intervention]) -> Callable[[], Tensor]:
        def run() -> Tensor:
            try:
                logits = trace_logits(setup, inputs, interventions, ctx if interventions else None)
                if cache.get_seq_length() != length + 1:
                    raise RuntimeError(f"the step left {cache.get_seq_length()} tokens in the cache, not {length + 1}")
                return logits
            finally:
                crop_to(cache, length)

        return run

    return {"plain": arm([]), "identity_hook": arm([IdentityHook()]), "var": arm([VAR(layers=list(LAYERS))])}


# ---- the same arms on the TransformerLens backend ----------------------------------------------


def tl_prefill_arms(setup: Setup, bridge: Any) -> dict[str, Callable[[], Tensor]]:
    """Plain bridge forward against run_with_hooks with each stack; a fresh context per hooked run."""
    from sinklens.backends.transformer_lens_backend import transformer_lens_hooks

    ids, kwargs = setup.inputs["input_ids"], _bridge_kwargs(setup.inputs)

    def plain() -> Tensor:
        with torch.no_grad():
            return bridge(ids, **kwargs)

    def hooked(make_interventions: Callable[[], list[Intervention]]) -> Callable[[], Tensor]:
        def run() -> Tensor:
            ctx = make_context(setup.loaded, setup.inputs)
            fwd_hooks = transformer_lens_hooks(setup.loaded, make_interventions(), ctx)
            with torch.no_grad():
                return bridge.run_with_hooks(ids, fwd_hooks=fwd_hooks, **kwargs)

        return run

    return {"plain": plain, "identity_hook": hooked(lambda: [IdentityHook()]), "var": hooked(tl_var_stack)}


def tl_var_stack() -> list[Intervention]:
    from sinklens.interventions.stack import Stack

    return [Stack(*var_stack())]


def _bridge_kwargs(inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {key: value for key, value in inputs.items() if key != "input_ids"}


def tl_prefill_with_cache(setup: Setup, bridge: Any) -> tuple[RunContext, Any]:
    """One FindSinks + VAR prefill on the bridge: the filled context and the prompt's HF cache."""
    from sinklens.backends.transformer_lens_backend import transformer_lens_hooks

    ctx = make_context(setup.loaded, setup.inputs)
    with torch.no_grad(), bridge.hooks(fwd_hooks=transformer_lens_hooks(setup.loaded, var_stack(), ctx)):
        _, cache = bridge(
            setup.inputs["input_ids"], return_type="logits_and_cache", use_cache=True, **_bridge_kwargs(setup.inputs)
        )
    if cache.get_seq_length() != setup.prompt_length:
        raise RuntimeError(f"prefill cache holds {cache.get_seq_length()} tokens, expected {setup.prompt_length}")
    return ctx, cache


def tl_decode_arms(setup: Setup, bridge: Any, ctx: RunContext, cache: Any) -> dict[str, Callable[[], Tensor]]:
    """One next token against the prompt's cache through the bridge; the hooks count it as step 1."""
    from sinklens.backends.transformer_lens_backend import transformer_lens_hooks

    length = setup.prompt_length
    ids = setup.inputs["input_ids"][:, -1:].clone()
    mask = torch.ones(1, length + 1, dtype=torch.long)

    def step(fwd_hooks: list[Any]) -> Tensor:
        try:
            with torch.no_grad():
                logits = bridge.run_with_hooks(ids, fwd_hooks=fwd_hooks, attention_mask=mask, past_key_values=cache)
            if cache.get_seq_length() != length + 1:
                raise RuntimeError(f"the step left {cache.get_seq_length()} tokens in the cache, not {length + 1}")
            return logits
        finally:
            crop_to(cache, length)

    def arm(interventions: list[Intervention]) -> Callable[[], Tensor]:
        def run() -> Tensor:
            fwd_hooks = transformer_lens_hooks(setup.loaded, interventions, ctx, first_step=1) if interventions else []
            return step(fwd_hooks)

        return run

    return {"plain": arm([]), "identity_hook": arm([IdentityHook()]), "var": arm([VAR(layers=list(LAYERS))])}


def transformer_lens_section(setup: Setup, repeats: int, decode_repeats: int) -> dict[str, Any]:
    """Every TransformerLens arm; builds the bridge over setup.loaded.model in place (nnsight is done with it)."""
    from sinklens.backends.transformer_lens_backend import build_bridge

    started = time.perf_counter()
    bridge = build_bridge(setup.loaded, copy_model=False)
    _log(f"bridge built in {time.perf_counter() - started:.0f}s")
    prefill = summarise(measure(tl_prefill_arms(setup, bridge), repeats, warmup=1))
    _log(f"TransformerLens prefill ratio {prefill['ratio']} (paired {prefill['paired_ratio']})")
    ctx, cache = tl_prefill_with_cache(setup, bridge)
    prefill["image_centric_pairs_per_layer"] = image_centric_counts(ctx, step=0)
    decode = summarise(measure(tl_decode_arms(setup, bridge, ctx, cache), decode_repeats, warmup=2))
    decode["image_centric_pairs_per_layer"] = image_centric_counts(ctx, step=1)
    decode["kv_length"] = setup.prompt_length + 1
    _log(f"TransformerLens decode step ratio {decode['ratio']} (paired {decode['paired_ratio']})")
    return {
        "baseline": "bridge(input_ids, pixel_values=..., attention_mask=...) with no hooks",
        "hooked": "bridge.run_with_hooks(..., fwd_hooks=transformer_lens_hooks(loaded, [Stack(FindSinks, VAR)], ctx))",
        "sinks": sink_report(ctx),
        "prefill": prefill,
        "decode_step": decode,
        "target": TL_TARGET_RATIO,
        "met": {"prefill": prefill["ratio"] <= TL_TARGET_RATIO, "decode_step": decode["ratio"] <= TL_TARGET_RATIO},
    }


# ---- timing -----------------------------------------------------------------------------------


@dataclass
class Timings:
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    last: dict[str, Tensor]  # the logits of each arm's last run


def measure(arms: dict[str, Callable[[], Tensor]], repeats: int, warmup: int) -> Timings:
    """Every arm once per round, in an order rotated each round; the first `warmup` rounds are dropped."""
    names = list(arms)
    timings = Timings(wall={n: [] for n in names}, cpu={n: [] for n in names}, last={})
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            timings.last[name] = arms[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if round_ >= warmup:
                timings.wall[name].append(wall)
                timings.cpu[name].append(cpu)
    return timings


def _ratio_of_medians(times: dict[str, list[float]], arm: str) -> float:
    return round(statistics.median(times[arm]) / statistics.median(times["plain"]), 4)


def _median_paired_ratio(times: dict[str, list[float]], arm: str) -> float:
    return round(statistics.median(a / p for a, p in zip(times[arm], times["plain"], strict=True)), 4)


def summarise(timings: Timings) -> dict[str, Any]:
    wall, cpu = timings.wall, timings.cpu
    plain_logits = timings.last["plain"]
    return {
        "plain_s": round(statistics.median(wall["plain"]), 4),
        "var_s": round(statistics.median(wall["var"]), 4),
        "ratio": _ratio_of_medians(wall, "var"),
        "paired_ratio": _median_paired_ratio(wall, "var"),
        "cpu_ratio": _ratio_of_medians(cpu, "var"),
        "identity_hook_s": round(statistics.median(wall["identity_hook"]), 4),
        "identity_hook_ratio": _ratio_of_medians(wall, "identity_hook"),
        "identity_hook_paired_ratio": _median_paired_ratio(wall, "identity_hook"),
        "identity_hook_cpu_ratio": _ratio_of_medians(cpu, "identity_hook"),
        "repeats": len(wall["plain"]),
        "max_abs_logit_change": {
            arm: float((timings.last[arm] - plain_logits).abs().max()) for arm in ("identity_hook", "var")
        },
        "wall_s": {name: [round(t, 4) for t in ts] for name, ts in wall.items()},
    }


def var_hook_alone(ctx: RunContext, n_queries: int, n_keys: int, repeats: int) -> float:
    """Median seconds of VAR's hook (one layer) on a random softmaxed [1, heads, q, k] pattern, no model."""
    hook = VAR(layers=[LAYERS[0]]).hooks(ctx)[0]
    generator = torch.Generator().manual_seed(SEED)
    pattern = torch.softmax(torch.randn(1, N_HEADS, n_queries, n_keys, generator=generator), dim=-1)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first call warms up
            fresh = pattern.clone()  # without grad the hook edits its input in place
            start = time.perf_counter()
            hook.fn(fresh, ctx)
            times.append(time.perf_counter() - start)
    return round(statistics.median(times[1:]), 6)


# ---- reports ----------------------------------------------------------------------------------


def sink_report(ctx: RunContext) -> dict[str, Any]:
    return {
        "dims": [SINK_DIM],
        "tau": TAU,
        "planted": f"embed_tokens.weight[bos, {SINK_DIM}] = {SINK_VALUE}",
        "positions_per_layer": {str(l): ctx.sinks[l][0].nonzero().flatten().tolist() for l in LAYERS},
        "bos_phi_per_layer": {str(l): round(float(ctx.phi[l][0, 0]), 2) for l in LAYERS},
        "max_other_phi_per_layer": {str(l): round(float(ctx.phi[l][0, 1:].max()), 2) for l in LAYERS},
    }


def image_centric_counts(ctx: RunContext, step: int) -> dict[str, int]:
    """(head, query) pairs VAR edited per layer, in the last run at `step`."""
    counts: dict[str, int] = {}
    for record in ctx.records.get("var", []):
        if record["step"] == step:
            counts[str(record["layer"])] = record["n_image_centric"]
    return counts


def shape_report(setup: Setup) -> dict[str, Any]:
    n_image = int(setup.loaded.check_inputs(setup.inputs).mask.sum())
    return {
        "model": "LlavaForConditionalGeneration; text model with LLaVA-1.5-7B's layer shape; random weights",
        "d_model": D_MODEL,
        "n_heads": N_HEADS,
        "n_kv_heads": N_HEADS,
        "d_mlp": D_MLP,
        "vocab": VOCAB,
        "n_layers": N_LAYERS,
        "vision": {"hidden": VISION_HIDDEN, "layers": VISION_LAYERS, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        "prompt_tokens": setup.prompt_length,
        "image_tokens": n_image,
        "text_tokens_after_image": N_TEXT_AFTER,
        "dtype": "float32",
        "attention": "eager",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "seed": SEED,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import nnsight
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "nnsight": nnsight.__version__,
        "transformer_lens": version("transformer-lens"),
    }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- main -------------------------------------------------------------------------------------


def run(repeats: int, decode_repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = os.getloadavg()
    loaded = build_model()
    setup = Setup(loaded=loaded, model=wrap(loaded), inputs=build_inputs(loaded))
    _log(f"built in {time.perf_counter() - started:.0f}s; prompt of {setup.prompt_length} tokens")

    prefill = summarise(measure(prefill_arms(setup), repeats, warmup=1))
    _log(f"prefill ratio {prefill['ratio']} (paired {prefill['paired_ratio']})")

    ctx, cache = prefill_with_cache(setup)
    prefill["image_centric_pairs_per_layer"] = image_centric_counts(ctx, step=0)
    prefill_ctx = make_context(loaded, setup.inputs)  # step 0, for the hook-alone timing
    prefill_ctx.sinks.update(ctx.sinks)

    decode = summarise(measure(decode_arms(setup, ctx, cache), decode_repeats, warmup=2))
    decode["image_centric_pairs_per_layer"] = image_centric_counts(ctx, step=1)
    decode["kv_length"] = setup.prompt_length + 1
    _log(f"decode step ratio {decode['ratio']} (paired {decode['paired_ratio']})")

    hook_alone = {
        "prefill_s": var_hook_alone(prefill_ctx, setup.prompt_length, setup.prompt_length, max(repeats, 5)),
        "decode_step_s": var_hook_alone(ctx, 1, setup.prompt_length + 1, max(decode_repeats, 20)),
        "note": "one layer's VAR hook on a random softmaxed [1, 32, q, k] pattern, outside the model; "
        "a run calls it once per layer in layers_with_var",
    }
    transformer_lens = transformer_lens_section(setup, repeats, decode_repeats)
    return {
        "shape": shape_report(setup),
        "layers_with_var": list(LAYERS),
        "layers_note": "VAR's default layers 2..L-2 are empty for L = 2: FindSinks and VAR get layers=[0, 1]",
        "sinks": sink_report(ctx),
        "prefill": prefill,
        "decode_step": decode,
        "var_hook_alone": hook_alone,
        "target": TARGET_RATIO,
        "met": {"prefill": prefill["ratio"] <= TARGET_RATIO, "decode_step": decode["ratio"] <= TARGET_RATIO},
        "transformer_lens": transformer_lens,
        "versions": _versions(),
        "total_s": round(time.perf_counter() - started, 1),
        # 1-minute load average before and after; above torch_threads, other processes shared the cores
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="VAR's time overhead over a plain forward, nnsight and TransformerLens (see module doc)."
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed prefill rounds (after 1 warm-up round)")
    parser.add_argument("--decode-repeats", type=int, default=20, help="timed decode rounds (after 2 warm-up rounds)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.decode_repeats < 1:
        parser.error("--repeats and --decode-repeats must be at least 1")
    text = json.dumps(run(args.repeats, args.decode_repeats), indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
