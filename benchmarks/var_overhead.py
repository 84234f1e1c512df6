"""How much slower is a forward pass with VAR than without, through nnsight and through TransformerLens?

Measured, on each backend in turn (`sinklens.NnsightRunner`, then
`sinklens.TransformerLensRunner` over its own copy of the model): the wall time
of a run with FindSinks + VAR, divided by the wall time of the same run with an
empty stack ("plain"). The same arms run on both backends: an arm is a stack and
a runner call, nothing backend-specific. Two cases:

- prefill: `runner.forward` over the whole prompt (651 tokens, 576 of them image
  tokens), logits at every position;
- decode_step: one generated token against the KV cache of that prompt. Timed
  inside `runner.generate(inputs, stack, max_new_tokens=1 + steps)`: a read-only
  hook at `hook_logits` stamps the clock at every step, and a decoding step is
  the time between two stamps (HF's choice of the token, the embedding, the
  layers and the LM head). The first decoding step is dropped as a warm-up, so
  the steps timed attend over 653 .. 651 + steps keys. FindSinks is
  prefill-only: while decoding only VAR acts, with the prompt's sink sets, as
  in any generation.

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
pattern unchanged, so the backend's cost of reaching into the attention function
and writing back is separated from VAR's tensor math. "var_hook_alone" times
VAR's hook function on a pattern of each shape outside any model.
Targets: 1.10 for nnsight, 1.15 for TransformerLens.

Arms run interleaved (plain, identity hook, VAR; the order rotates every round,
`timing.measure`) to cancel drift. Reported: medians of wall time, the ratio of
the medians, the median (and min, max) of the per-round ratios (robust to load
that changes between rounds), and the same ratio in process CPU time (less
sensitive to other processes on a shared machine). Ratios compare arms of one
run only. Adding an arm is one entry in `STACKS`; a backend, one in `RUNNERS`.
Routes section (`benchmarks/routes.py`, `--sections routes`): the attention
routes at two attention shapes, LLaVA-1.5-7B's (T = 651, 576 image tokens)
and LLaVA-NeXT-7B's length (T = 2,991, 2,916 image tokens in one grid), on
LLaVA-1.5-7B's text layer shape with `--route-layers` decoder layers (default
1: a CPU cannot run 32 at these shapes 15 times per arm; the per-layer
proportions are the 7B model's, the embedding and LM head weigh more) and the
last position unembedded (as generation does). Four arms, interleaved: plain
sdpa, FindSinks + VAR on the rows route, plain eager, FindSinks + VAR on eager
(VAR on every layer, sink planted in the BOS embedding), each per prefill and
per decoding step, `--route-repeats` rounds (default 15); each ratio is
reported as min / median / max of the per-round ratios and as the ratio of the
arms' minimum times, on which the targets are judged: rows over plain sdpa <=
1.05, eager VAR over plain eager <= 1.10. Peak memory of each arm is measured
in its own process (Linux VmHWM, reset after the model is built): target rows
within 1.10x of plain sdpa; eager's is reported. `var_arithmetic` is VAR's own
hook function on the rows it reads, all layers, as a share of the plain sdpa
forward. Top-level keys `rows_prefill_ratio`, `rows_decode_ratio` (over plain
sdpa), `eager_prefill_ratio`, `eager_decode_ratio` and `peak_memory` hold them
per shape. (routes.py keeps its own interleaved loop, written before
`timing.py`; both rotate arms per round and pair samples by round.)

Run:

    python benchmarks/var_overhead.py [--repeats 5] [--decode-rounds 3] [--decode-steps 8] [--out FILE]
        [--sections backends,routes] [--route-repeats 15] [--route-layers 1] [--route-shapes llava_1_5_7b,llava_next_7b]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import sinklens as sl
from timing import Arm, Clocked, Timings, compare, emit, measure

SEED = 0
TARGETS = {"nnsight": 1.10, "transformer_lens": 1.15}


@dataclass(frozen=True)
class Shape:
    """A LLaVA-1.5-style model: a LLaMA text model and a CLIP tower, at some size."""

    d_model: int
    n_heads: int
    d_mlp: int
    vocab: int
    n_layers: int
    image_size: int  # image_size // patch_size squared image tokens
    patch_size: int
    vision_hidden: int
    vision_layers: int
    n_text_before: int  # prompt: BOS, text, image, text
    n_text_after: int


# text model: LLaVA-1.5-7B (LLaMA-2-7B) layer shape, 2 layers; vision: a small CLIP tower at
# LLaVA-1.5's resolution -> 24 x 24 = 576 image tokens; LLaVA-1.5's chat template puts a few
# tokens before the image
SHAPE = Shape(d_model=4096, n_heads=32, d_mlp=11008, vocab=32000, n_layers=2, image_size=336, patch_size=14,
              vision_hidden=64, vision_layers=2, n_text_before=4, n_text_after=70)  # fmt: skip

LAYERS = (0, 1)
SINK_DIM = 2533
SINK_VALUE = 200.0
TAU = 20.0


# ---- model and prompt -------------------------------------------------------------------------


def build_model(shape: Shape = SHAPE) -> sl.LoadedModel:
    """The LLaVA-1.5-shaped model with a planted BOS sink, described by sinklens."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from sinklens.builtin.tiny_shared import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    text = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=2 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=2,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=shape.vision_hidden,
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
        size={"shortest_edge": shape.image_size}, crop_size={"height": shape.image_size, "width": shape.image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=shape.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
    )
    return sl.from_hf(model, processor, name="llava-1.5-7b-shape-2-layers")


def build_inputs(loaded: sl.LoadedModel, shape: Shape = SHAPE) -> dict[str, Tensor]:
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
    image = [loaded.image_token_id] * (rows * cols)
    input_ids = torch.tensor([[tokenizer.bos_token_id, *text(shape.n_text_before), *image, *text(shape.n_text_after)]])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(1, 3, shape.image_size, shape.image_size, generator=generator),
    }


# ---- the arms: a stack, made fresh for every call as a user does per prompt ----------------------


def _unchanged(pattern: Tensor, ctx: Any) -> Tensor:
    return pattern


def var_stack() -> list[Any]:
    return [sl.FindSinks(dims=(SINK_DIM,), tau=TAU, layers=list(LAYERS)), sl.VAR(layers=list(LAYERS))]


def identity_stack() -> list[Any]:
    """Reads the attention pattern and hands it back unchanged: the backend's cost without VAR's math."""
    return [sl.Hook(f"blocks.{layer}.attn.hook_pattern", _unchanged) for layer in LAYERS]


STACKS: dict[str, Callable[[], list[Any]]] = {"plain": list, "identity_hook": identity_stack, "var": var_stack}
RUNNERS: dict[str, Callable[[sl.LoadedModel], Any]] = {
    "nnsight": lambda loaded: sl.NnsightRunner(loaded),
    # over a copy of the weights: one more copy in memory while this backend runs
    "transformer_lens": lambda loaded: sl.TransformerLensRunner(loaded),
}


def forward_arms(runner: Any, inputs: dict[str, Tensor]) -> list[Arm]:
    """One `runner.forward` over the prompt per call."""
    return [Arm(name, partial(_forward, runner, inputs, stack)) for name, stack in STACKS.items()]


def _forward(runner: Any, inputs: dict[str, Tensor], stack: Callable[[], list[Any]]) -> Any:
    return runner.forward(inputs, stack())


@dataclass(frozen=True)
class StepClock:
    """A read-only member: the wall and process-CPU clocks at `hook_logits`, once per forward pass (step)."""

    wall: list[float]
    cpu: list[float]

    def hooks(self, ctx: Any) -> list[Any]:
        return [sl.Hook("hook_logits", partial(_stamp, wall=self.wall, cpu=self.cpu), writes=False)]


def _stamp(logits: Tensor, ctx: Any, *, wall: list[float], cpu: list[float]) -> None:
    wall.append(time.perf_counter())
    cpu.append(time.process_time())


def decode_arms(runner: Any, inputs: dict[str, Tensor], steps: int) -> list[Arm]:
    """One `runner.generate` per call; its samples are the decoding steps after the first."""
    return [Arm(name, partial(_decode, runner, inputs, stack, steps)) for name, stack in STACKS.items()]


def _decode(runner: Any, inputs: dict[str, Tensor], stack: Callable[[], list[Any]], steps: int) -> Clocked:
    clock = StepClock([], [])
    result = runner.generate(inputs, [*stack(), clock], max_new_tokens=1 + steps)
    if len(clock.wall) != 1 + steps:
        raise RuntimeError(f"hook_logits fired {len(clock.wall)} times in {1 + steps} steps")
    # stamps at steps 0 (prefill) .. steps; intervals 1 .. steps are decoding steps, the first a warm-up
    return Clocked(result, wall=_intervals(clock.wall)[1:], cpu=_intervals(clock.cpu)[1:])


def _intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


# ---- reports ----------------------------------------------------------------------------------


def summarise(timings: Timings, logits: Callable[[Any], Tensor]) -> dict[str, Any]:
    """VAR and the identity hook against plain: seconds, ratios, and how much each changed the logits."""
    var, identity = compare(timings, "var", base="plain"), compare(timings, "identity_hook", base="plain")
    plain_logits = logits(timings.last["plain"])
    return {
        "plain_s": var["base_s"],
        "var_s": var["arm_s"],
        **{key: var[key] for key in ("ratio", "paired_ratio", "paired_ratio_min", "paired_ratio_max", "cpu_ratio")},
        "identity_hook_s": identity["arm_s"],
        "identity_hook_ratio": identity["ratio"],
        "identity_hook_paired_ratio": identity["paired_ratio"],
        "identity_hook_cpu_ratio": identity["cpu_ratio"],
        "repeats": len(timings.samples("plain")),
        "max_abs_logit_change": {
            arm: float((logits(timings.last[arm]) - plain_logits).abs().max()) for arm in ("identity_hook", "var")
        },
        "wall_s": {name: [round(t, 4) for t in timings.samples(name)] for name in timings.wall},
    }


# What the reports read of a run's context: the sink sets and phi FindSinks found, the records VAR keeps.


def sink_report(ctx: Any) -> dict[str, Any]:
    return {
        "dims": [SINK_DIM],
        "tau": TAU,
        "planted": f"embed_tokens.weight[bos, {SINK_DIM}] = {SINK_VALUE}",
        "positions_per_layer": {str(l): ctx.sinks[l][0].nonzero().flatten().tolist() for l in LAYERS},
        "bos_phi_per_layer": {str(l): round(float(ctx.phi[l][0, 0]), 2) for l in LAYERS},
        "max_other_phi_per_layer": {str(l): round(float(ctx.phi[l][0, 1:].max()), 2) for l in LAYERS},
    }


def image_centric_counts(ctx: Any, step: int) -> dict[str, int]:
    """(head, query) pairs VAR edited per layer at `step` of the run."""
    return {str(r["layer"]): r["n_image_centric"] for r in ctx.records.get("var", []) if r["step"] == step}


def var_hook_alone(ctx: Any, n_queries: int, n_keys: int, repeats: int) -> float:
    """Median seconds of VAR's hook (one layer) on a random softmaxed [1, heads, q, k] pattern, no model."""
    hook = sl.VAR(layers=[LAYERS[0]]).hooks(ctx)[0]
    generator = torch.Generator().manual_seed(SEED)
    pattern = torch.softmax(torch.randn(1, SHAPE.n_heads, n_queries, n_keys, generator=generator), dim=-1)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first call warms up
            fresh = pattern.clone()  # without grad the hook edits its input in place
            start = time.perf_counter()
            hook.fn(fresh, ctx)
            times.append(time.perf_counter() - start)
    return round(statistics.median(times[1:]), 6)


def shape_report(loaded: sl.LoadedModel, inputs: dict[str, Tensor]) -> dict[str, Any]:
    return {
        "model": "LlavaForConditionalGeneration; text model with LLaVA-1.5-7B's layer shape; random weights",
        "d_model": SHAPE.d_model,
        "n_heads": SHAPE.n_heads,
        "n_kv_heads": SHAPE.n_heads,
        "d_mlp": SHAPE.d_mlp,
        "vocab": SHAPE.vocab,
        "n_layers": SHAPE.n_layers,
        "vision": {"hidden": SHAPE.vision_hidden, "layers": SHAPE.vision_layers, "image_size": SHAPE.image_size,
                   "patch_size": SHAPE.patch_size},  # fmt: skip
        "prompt_tokens": inputs["input_ids"].shape[1],
        "image_tokens": int(loaded.check_inputs(inputs).mask.sum()),
        "text_tokens_after_image": SHAPE.n_text_after,
        "dtype": "float32",
        "attention": "eager",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "seed": SEED,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name.replace("-", "_"): version(name) for name in ("torch", "transformers", "nnsight", "transformer-lens")}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- main -------------------------------------------------------------------------------------


def backend_section(
    backend: str, runner: Any, inputs: dict[str, Tensor], repeats: int, decode_rounds: int, decode_steps: int
) -> tuple[dict[str, Any], Any, Any]:
    """The prefill and decoding-step arms on one runner, interleaved within each case.

    Returns the report and the contexts of the last VAR runs (prefill, generation).
    """
    prefill_timings = measure(forward_arms(runner, inputs), repeats, warmup=1)
    prefill = summarise(prefill_timings, lambda result: result.logits)
    _log(f"{backend} prefill ratio {prefill['ratio']} (paired {prefill['paired_ratio']})")
    decode_timings = measure(decode_arms(runner, inputs, decode_steps), decode_rounds, warmup=1)
    # the logits of the timed steps (step 0 is the prefill, step 1 the dropped warm-up)
    decode = summarise(decode_timings, lambda result: result.step_logits[:, 2:])
    _log(f"{backend} decode step ratio {decode['ratio']} (paired {decode['paired_ratio']})")

    prompt = inputs["input_ids"].shape[1]
    prefill_ctx, decode_ctx = prefill_timings.last["var"].ctx, decode_timings.last["var"].ctx
    prefill["image_centric_pairs_per_layer"] = image_centric_counts(prefill_ctx, step=0)
    decode["image_centric_pairs_per_layer"] = image_centric_counts(decode_ctx, step=1)
    decode["kv_length"] = [prompt + 2, prompt + decode_steps]  # keys attended by the first and last step timed
    target = TARGETS[backend]
    report = {
        "baseline": f"{type(runner).__name__}.forward / .generate with an empty stack",
        "hooked": f"{type(runner).__name__}.forward / .generate with [FindSinks, VAR] (layers 0, 1)",
        "sinks": sink_report(prefill_ctx),
        "prefill": prefill,
        "decode_step": decode,
        "target": target,
        "met": {"prefill": prefill["ratio"] <= target, "decode_step": decode["ratio"] <= target},
    }
    return report, prefill_ctx, decode_ctx


ROUTE_KEYS = {
    "rows_prefill_ratio": ("prefill", "var_rows_over_plain_sdpa"),
    "rows_decode_ratio": ("decode_step", "var_rows_over_plain_sdpa"),
    "eager_prefill_ratio": ("prefill", "var_eager_over_plain_eager"),
    "eager_decode_ratio": ("decode_step", "var_eager_over_plain_eager"),
}
ROUTE_SHAPES = ("llava_1_5_7b", "llava_next_7b")


def routes_report(repeats: int, layers: int, shapes: tuple[str, ...] = ROUTE_SHAPES, memory: bool = True) -> dict[str, Any]:
    """The routes section (module doc) and its top-level keys, per shape."""
    from routes import TARGETS as ROUTE_TARGETS
    from routes import cpu_section

    section = cpu_section(layers={shape: layers for shape in shapes}, repeats=repeats, decode_repeats=repeats,
                          memory=memory)  # fmt: skip
    shapes_done = section["shapes"]
    report: dict[str, Any] = {
        key: {shape: data[case]["ratios"][ratio] for shape, data in shapes_done.items()}
        for key, (case, ratio) in ROUTE_KEYS.items()
    }
    report["peak_memory"] = {shape: data.get("peak_memory") for shape, data in shapes_done.items()}
    met = {}
    for shape, data in shapes_done.items():
        met[shape] = {
            key: report[key][shape]["of_minimums"]
            <= ROUTE_TARGETS["rows_over_plain_sdpa" if key.startswith("rows") else "eager_over_plain_eager"]
            for key in ROUTE_KEYS
        }
        peaks = data.get("peak_memory")
        if peaks:
            met[shape]["rows_memory"] = all(
                peaks["var_rows"][case] <= ROUTE_TARGETS["rows_memory_over_plain_sdpa"] * peaks["plain_sdpa"][case]
                for case in ("prefill_peak_bytes", "decode_step_peak_bytes")
            )
    report["route_targets_met"] = met
    report["routes"] = section
    return report


def run(
    repeats: int, decode_rounds: int, decode_steps: int, sections: tuple[str, ...] = ("backends", "routes"),
    route_repeats: int = 15, route_layers: int = 1, route_shapes: tuple[str, ...] = ROUTE_SHAPES,
) -> dict[str, Any]:
    if "backends" not in sections:
        started = time.perf_counter()
        return {**routes_report(route_repeats, route_layers, route_shapes), "versions": _versions(),
                "total_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    routes = routes_report(route_repeats, route_layers, route_shapes) if "routes" in sections else {}
    return {**run_backends(repeats, decode_rounds, decode_steps), **routes}


def run_backends(repeats: int, decode_rounds: int, decode_steps: int) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = os.getloadavg()
    loaded = build_model()
    inputs = build_inputs(loaded)
    prompt = inputs["input_ids"].shape[1]
    _log(f"built in {time.perf_counter() - started:.0f}s; prompt of {prompt} tokens")

    sections, contexts = {}, {}
    for backend, make_runner in RUNNERS.items():
        begun = time.perf_counter()
        runner = make_runner(loaded)
        _log(f"{backend} runner ready in {time.perf_counter() - begun:.0f}s")
        sections[backend], *contexts[backend] = backend_section(
            backend, runner, inputs, repeats, decode_rounds, decode_steps
        )
        del runner  # the TransformerLens runner's copy of the weights goes with it

    prefill_ctx, decode_ctx = contexts["nnsight"]
    hook_alone = {
        "prefill_s": var_hook_alone(prefill_ctx, prompt, prompt, max(repeats, 5)),
        "decode_step_s": var_hook_alone(decode_ctx, 1, prompt + 1, 20),
        "note": "one layer's VAR hook on a random softmaxed [1, 32, q, k] pattern, outside the model; "
        "a run calls it once per layer in layers_with_var",
    }
    return {
        "shape": shape_report(loaded, inputs),
        "layers_with_var": list(LAYERS),
        "layers_note": "VAR's default layers 2..L-2 are empty for L = 2: FindSinks and VAR get layers=[0, 1]",
        **sections["nnsight"],
        "var_hook_alone": hook_alone,
        "transformer_lens": sections["transformer_lens"],
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
    parser.add_argument("--decode-rounds", type=int, default=3, help="timed generate calls per arm (after 1 warm-up)")
    parser.add_argument("--decode-steps", type=int, default=8, help="decoding steps per generate call (the first untimed)")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--sections", default="backends,routes",
                        help="comma-separated: backends (nnsight and TransformerLens), routes (default: both)")  # fmt: skip
    parser.add_argument("--route-repeats", type=int, default=15, help="timed rounds per arm in the routes section")
    parser.add_argument("--route-layers", type=int, default=1, help="decoder layers of the routes section's model")
    parser.add_argument("--route-shapes", default=",".join(ROUTE_SHAPES),
                        help="comma-separated attention shapes of the routes section (default: both)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.decode_rounds < 1 or args.decode_steps < 2:
        parser.error("--repeats and --decode-rounds must be at least 1, --decode-steps at least 2")
    if args.route_repeats < 1 or args.route_layers < 1:
        parser.error("--route-repeats and --route-layers must be at least 1")
    sections = tuple(part.strip() for part in args.sections.split(",") if part.strip())
    if not sections or set(sections) - {"backends", "routes"}:
        parser.error("--sections: choose from backends, routes")
    shapes = tuple(part.strip() for part in args.route_shapes.split(",") if part.strip())
    if not shapes or set(shapes) - set(ROUTE_SHAPES):
        parser.error(f"--route-shapes: choose from {', '.join(ROUTE_SHAPES)}")
    result = run(args.repeats, args.decode_rounds, args.decode_steps, sections, args.route_repeats, args.route_layers, shapes)
    emit(result, args.out)


if __name__ == "__main__":
    main()
