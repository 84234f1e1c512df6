"""The rows route at full scale: LLaVA-1.5-7B's real configuration, random weights, on a GPU.

Builds `LlavaForConditionalGeneration` from llava-1.5-7b's configuration,
written out here (nothing is downloaded): the CLIP ViT-L/14-336 vision tower
(24 layers, width 1024, 16 heads, patch 14 at 336 px: 576 image tokens), the
2-layer GELU projector, and LLaMA-2-7B as language model (width 4096, 32
layers, 32 heads, MLP 11008, vocabulary 32064 as in llava-hf), with random
weights (fixed seed) in each dtype asked for (default float16 and bfloat16).
The prompt is BOS, 4 text tokens, the 576 image tokens and 70 text tokens
(651 tokens, as a LLaVA-1.5 prompt with a question of about 50 words), with
random pixels; the vision tower runs for real.

Four arms, each one nnsight trace that saves the logits:

- `plain_sdpa`: the model with sdpa attention, nothing attached;
- `plain_eager`: eager attention, nothing attached;
- `var_eager`: eager attention, FindSinks + VAR attached (every layer computes
  its full `[T, T]` pattern);
- `var_rows`: the rows route (`attention="rows"`), FindSinks + VAR attached
  (sdpa everywhere, explicit scores and pattern only for the text queries
  after the image in the layers VAR acts on).

Each arm is timed per prefill (the whole prompt) and per decoding step (one
token against the prompt's KV cache, VAR on the new token; the cache is
cropped back after every step), interleaved (the order rotates every round),
after warm-up rounds, with `torch.cuda.synchronize()` around each. Peak memory
is `torch.cuda.max_memory_allocated()` after resetting the peak before each
arm's run (the weights included; `weights_bytes` is reported to subtract).

A random-weight LLaMA has no massive activations, so a BOS sink is planted as
`benchmarks/var_overhead.py` does (dimension 2533 of the BOS embedding, one of
LLaMA-2-7B's sink dimensions) and FindSinks uses that dimension; the sinks it
finds per layer are reported. VAR uses its default layers (2..30).

Agreement, rows route against eager, with VAR: in half precision the two
routes cannot agree to fp32's 1e-5, because they are different kernels: sdpa
(flash or memory-efficient) keeps its softmax and accumulators in fp32 and
never rounds the pattern to half, where eager rounds the fp32 softmax to half
before multiplying by the values; the rounding differences then grow through
32 layers. The yardstick is therefore the model's own route difference:
`max|plain_sdpa - plain_eager|` on the same weights and prompt. The rows route
passes when `max|var_rows - var_eager| <= 2 x max|plain_sdpa - plain_eager|`
(the rows route adds no error of its own beyond the kernel's) and when the
two agree on the greedy token at every decoding step measured; both figures
are reported with the relative size (difference / max |logit|). In float32
(`--dtypes float32`) the difference is reported against 1e-4 (TF32 off).

Run on a GPU (about 16 GB per dtype for the weights):

    python benchmarks/gpu_scale.py [--dtypes float16,bfloat16] [--repeats 10] [--out FILE]

and at reduced size on a CPU (what tests/test_gpu_scale.py runs):

    python benchmarks/gpu_scale.py --smoke --device cpu --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from sinklens.backends.nnsight_backend import attach, make_context, wrap
from sinklens.interventions.base import RunContext
from sinklens.interventions.sinks import FindSinks
from sinklens.interventions.var import VAR
from sinklens.models.loading import LoadedModel, from_hf

SEED = 0
SINK_VALUE = 200.0
N_TEXT_BEFORE = 4
N_TEXT_AFTER = 70
BOS, IMAGE_TOKEN, PAD = 1, 32000, 32001
ARMS = ("plain_sdpa", "plain_eager", "var_eager", "var_rows")
HALF_FACTOR = 2.0  # rows-vs-eager VAR difference allowed, as a multiple of plain sdpa-vs-eager
FLOAT32_TOLERANCE = 1e-4
# the inputs are token ids made here: no processor, no tokenizer (nnsight's wrapper accepts None)
NO_PROCESSOR = SimpleNamespace(tokenizer=None)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Size:
    """The model's size: LLaVA-1.5-7B's, or a reduced one for a CPU smoke run."""

    text_width: int = 4096
    text_layers: int = 32
    text_heads: int = 32
    text_mlp: int = 11008
    vocab: int = 32064
    sink_dim: int = 2533  # a LLaMA-2-7B sink dimension; the BOS embedding gets SINK_VALUE there
    tau: float = 20.0  # FindSinks' threshold (phi is at most sqrt(width))
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp: int = 4096
    projection_dim: int = 768


FULL = Size()
# the smoke size keeps the 336 px image (576 image tokens) and the prompt, shrinks widths and depth
SMOKE = Size(text_width=64, text_layers=5, text_heads=4, text_mlp=128, vocab=32064, sink_dim=13, tau=4.0, vision_width=32,
             vision_layers=1, vision_heads=2, vision_mlp=64, projection_dim=32)  # fmt: skip


def llava_config(size: Size) -> Any:
    """llava-1.5-7b's configuration (llava-hf/llava-1.5-7b-hf), at `size`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=size.vision_width, intermediate_size=size.vision_mlp, num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads, image_size=336, patch_size=14, projection_dim=size.projection_dim,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, vocab_size=32000,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=size.vocab, hidden_size=size.text_width, intermediate_size=size.text_mlp,
        num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads, num_key_value_heads=size.text_heads,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
        bos_token_id=BOS, eos_token_id=2, pad_token_id=PAD, tie_word_embeddings=False,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", pad_token_id=PAD,
    )  # fmt: skip


def build_model(size: Size, dtype: torch.dtype, device: str) -> Any:
    """Random weights (seeded) made directly on `device` in `dtype`, with the planted BOS sink; eager attention."""
    from transformers import LlavaForConditionalGeneration

    config = llava_config(size)
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight[BOS, size.sink_dim] = SINK_VALUE
    return model


def build_inputs(device: str, dtype: torch.dtype) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(SEED)

    def text(n: int) -> list[int]:
        return torch.randint(3, 31000, (n,), generator=generator).tolist()

    ids = [BOS, *text(N_TEXT_BEFORE), *[IMAGE_TOKEN] * 576, *text(N_TEXT_AFTER)]
    input_ids = torch.tensor([ids], device=device)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(1, 3, 336, 336, generator=generator).to(device=device, dtype=dtype),
    }


def var_stack(prefill: bool, size: Size) -> list[Any]:
    var = VAR()
    return [FindSinks(dims=(size.sink_dim,), tau=size.tau), var] if prefill else [var]


# ---- arms -------------------------------------------------------------------------------------


@dataclass
class Route:
    """One attention route over the shared weights: its LoadedModel and nnsight wrapper."""

    name: str  # "sdpa", "eager" or "rows"
    loaded: LoadedModel
    nnsight_model: Any

    def activate(self) -> None:
        """Switch the shared model to this route (the routes take turns on one copy of the weights)."""
        if self.name == "sdpa":
            self.loaded.model.set_attn_implementation("sdpa")
        else:
            from_hf(self.loaded.model, NO_PROCESSOR, name=self.loaded.name, attention=self.name)


def routes(model: Any) -> dict[str, Route]:
    made = {}
    for name in ("sdpa", "rows", "eager"):
        loaded = from_hf(model, NO_PROCESSOR, name="llava-1.5-7b-config-random", attention="eager" if name == "sdpa" else name)
        made[name] = Route(name, loaded, wrap(loaded))
    return made


@dataclass
class Arm:
    """What one arm runs: `activate` (untimed: switch the route), then `run` (timed)."""

    route: Route
    run: Callable[[], Tensor]


ARM_ROUTES = {"plain_sdpa": "sdpa", "plain_eager": "eager", "var_eager": "eager", "var_rows": "rows"}


def trace(route: Route, inputs: Mapping[str, Any], stack: list[Any], ctx: RunContext | None) -> Tensor:
    with torch.no_grad(), route.nnsight_model.trace(**inputs):
        if stack:
            attach(route.nnsight_model, route.loaded, stack, inputs, ctx=ctx)
        logits = route.nnsight_model.output.logits.save()
    return logits


def prefill_arms(made: dict[str, Route], inputs: dict[str, Tensor], size: Size) -> dict[str, Arm]:
    def arm(name: str) -> Arm:
        route = made[ARM_ROUTES[name]]

        def run() -> Tensor:
            if name.startswith("plain"):
                return trace(route, inputs, [], None)
            return trace(route, inputs, var_stack(True, size), make_context(route.loaded, inputs))

        return Arm(route, run)

    return {name: arm(name) for name in ARMS}


def prefill_cache(route: Route, inputs: dict[str, Tensor], stack: list[Any]) -> tuple[RunContext, Any]:
    """A prefill with use_cache=True on `route`: its context (sink sets) and the prompt's cache."""
    route.activate()
    ctx = make_context(route.loaded, inputs)
    with torch.no_grad(), route.nnsight_model.trace(**inputs, use_cache=True):
        if stack:
            attach(route.nnsight_model, route.loaded, stack, inputs, ctx=ctx)
        cache = route.nnsight_model.output.past_key_values.save()
    return ctx, cache


def decode_arms(made: dict[str, Route], inputs: dict[str, Tensor], size: Size) -> dict[str, Arm]:
    """One token against the prompt's cache (each arm its own, made on its route), cropped back after each step."""
    length = inputs["input_ids"].shape[1]
    step_inputs = {
        "input_ids": inputs["input_ids"][:, -1:].clone(),
        "attention_mask": torch.ones(1, length + 1, dtype=torch.long, device=inputs["input_ids"].device),
    }

    def arm(name: str) -> Arm:
        route = made[ARM_ROUTES[name]]
        with_var = name.startswith("var")
        ctx, cache = prefill_cache(route, inputs, var_stack(True, size) if with_var else [])
        ctx.step = 1  # a generated token: VAR acts on it with the prompt's sink sets

        def run() -> Tensor:
            try:
                step = {**step_inputs, "past_key_values": cache, "use_cache": True}
                return trace(route, step, var_stack(False, size) if with_var else [], ctx)
            finally:
                extra = cache.get_seq_length() - length
                if extra:
                    cache.crop(-extra)

        return Arm(route, run)

    return {name: arm(name) for name in ARMS}


# ---- measuring --------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(arms: dict[str, Arm], repeats: int, warmup: int, device: str) -> dict[str, Any]:
    """Arms interleaved (order rotated every round): wall times, peak memory per arm, last logits."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    peak: dict[str, int] = {name: 0 for name in names}
    last: dict[str, Tensor] = {}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            arms[name].route.activate()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            start = time.perf_counter()
            last[name] = arms[name].run()
            _sync(device)
            elapsed = time.perf_counter() - start
            if device.startswith("cuda"):
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated())
            if round_ >= warmup:
                times[name].append(elapsed)
    return {"times": times, "peak": peak, "last": last}


def summary(measured: dict[str, Any], device: str) -> dict[str, Any]:
    times = measured["times"]
    out: dict[str, Any] = {
        "seconds": {name: {"min": round(min(t), 5), "median": round(statistics.median(t), 5), "max": round(max(t), 5)}
                    for name, t in times.items()},  # fmt: skip
        "ratios": {
            "var_rows_over_plain_sdpa": _ratios(times["var_rows"], times["plain_sdpa"]),
            "var_eager_over_plain_eager": _ratios(times["var_eager"], times["plain_eager"]),
            "var_rows_over_var_eager": _ratios(times["var_rows"], times["var_eager"]),
        },
        "repeats": len(times["plain_sdpa"]),
    }
    if device.startswith("cuda"):
        out["max_memory_allocated_bytes"] = measured["peak"]
    return out


def _ratios(arm: list[float], base: list[float]) -> dict[str, float]:
    paired = [a / b for a, b in zip(arm, base, strict=True)]
    return {"of_minimums": round(min(arm) / min(base), 4), "min": round(min(paired), 4),
            "median": round(statistics.median(paired), 4), "max": round(max(paired), 4)}  # fmt: skip


def agreement(prefill: dict[str, Tensor], decode: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Any]:
    """VAR rows against VAR eager, judged against plain sdpa against plain eager (see the module doc)."""

    def diff(a: Tensor, b: Tensor) -> float:
        return float((a.float() - b.float()).abs().max())

    scale = float(prefill["var_eager"].float().abs().max())
    rows_vs_eager = max(diff(prefill["var_rows"], prefill["var_eager"]), diff(decode["var_rows"], decode["var_eager"]))
    sdpa_vs_eager = max(diff(prefill["plain_sdpa"], prefill["plain_eager"]),
                        diff(decode["plain_sdpa"], decode["plain_eager"]))  # fmt: skip
    same_token = all(
        bool((logits["var_rows"][:, -1].argmax(-1) == logits["var_eager"][:, -1].argmax(-1)).all())
        for logits in (prefill, decode)
    )
    if dtype == torch.float32:
        tolerance, rule = FLOAT32_TOLERANCE, f"{FLOAT32_TOLERANCE} (float32)"
    else:
        tolerance, rule = HALF_FACTOR * sdpa_vs_eager, f"{HALF_FACTOR} x max|plain_sdpa - plain_eager|"
    return {
        "max_abs_logit_diff_var_rows_vs_var_eager": rows_vs_eager,
        "max_abs_logit_diff_plain_sdpa_vs_plain_eager": sdpa_vs_eager,
        "max_abs_logit": scale,
        "relative_rows_vs_eager": rows_vs_eager / scale if scale else 0.0,
        "same_greedy_token": same_token,
        "tolerance": tolerance,
        "tolerance_rule": rule,
        "met": rows_vs_eager <= tolerance and same_token,
    }


def sinks_found(ctx: RunContext) -> dict[str, list[int]]:
    return {str(layer): sinks[0].nonzero().flatten().tolist() for layer, sinks in sorted(ctx.sinks.items())}


def run_dtype(
    model: Any, dtype: torch.dtype, device: str, repeats: int, decode_repeats: int, size: Size
) -> dict[str, Any]:
    inputs = build_inputs(device, dtype)
    made = routes(model)
    started = time.perf_counter()
    prefill = measure(prefill_arms(made, inputs, size), repeats, warmup=2, device=device)
    _log(f"{dtype}: prefill measured in {time.perf_counter() - started:.0f}s")
    started = time.perf_counter()
    decode = measure(decode_arms(made, inputs, size), decode_repeats, warmup=2, device=device)
    _log(f"{dtype}: decode measured in {time.perf_counter() - started:.0f}s")
    ctx, _ = prefill_cache(made["rows"], inputs, var_stack(True, size))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "prefill": summary(prefill, device),
        "decode_step": summary(decode, device),
        "agreement": agreement(prefill["last"], decode["last"], dtype),
        "sinks_per_layer": sinks_found(ctx),
        "image_centric_pairs": sum(r["n_image_centric"] for r in ctx.records.get("var", [])),
        "weights_bytes": weights,
    }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(*, dtypes: list[str], device: str, smoke: bool, repeats: int, decode_repeats: int) -> dict[str, Any]:
    import nnsight
    import transformers

    size = SMOKE if smoke else FULL
    started = time.perf_counter()
    report: dict[str, Any] = {
        "model": "LlavaForConditionalGeneration from llava-1.5-7b's configuration, random weights"
        + (" (smoke size: reduced widths and layers)" if smoke else ""),
        "size": asdict(size),
        "prompt": {"tokens": 1 + N_TEXT_BEFORE + 576 + N_TEXT_AFTER, "image_tokens": 576, "text_after_image": N_TEXT_AFTER},
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "nnsight": nnsight.__version__},
        "dtypes": {},
    }
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = None
    for name in dtypes:
        dtype = DTYPES[name]
        model = build_model(size, dtype, device) if model is None else model.to(dtype)
        _log(f"{name}: model ready after {time.perf_counter() - started:.0f}s")
        report["dtypes"][name] = run_dtype(model, dtype, device, repeats, decode_repeats, size)
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The rows route at LLaVA-1.5-7B's full configuration (see module doc).")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated: float16, bfloat16, float32")
    parser.add_argument("--smoke", action="store_true", help="reduced size, for a CPU run")
    parser.add_argument("--repeats", type=int, default=10, help="timed prefill rounds per arm (after 2 warm-up)")
    parser.add_argument("--decode-repeats", type=int, default=20, help="timed decoding steps per arm (after 2 warm-up)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        parser.error(f"--dtypes: unknown {unknown}; choose from {', '.join(DTYPES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; run with --smoke --device cpu for the reduced CPU run")
    if args.repeats < 1 or args.decode_repeats < 1:
        parser.error("--repeats and --decode-repeats must be at least 1")
    report = run(dtypes=dtypes, device=args.device, smoke=args.smoke, repeats=args.repeats, decode_repeats=args.decode_repeats)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
