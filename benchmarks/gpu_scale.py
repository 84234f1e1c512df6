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

The eval arm (`--eval`): a whole POPE-shaped split, `--eval-images` images
(500, as a POPE split) x 6 questions, 3 new tokens each, on the same model in
bfloat16 with FindSinks + VAR on the rows route, `--eval-batch` questions per
call: once with shared image prefixes (`NnsightRunner.generate(...,
prefixes=store)`, as `sinklens eval` runs by default) and once question by
question. It reports the wall time and examples/s of both and whether every
answer agrees (the goal: a whole split in at most 60 s on one H200).

Run on a GPU (about 16 GB per dtype for the weights):

    python benchmarks/gpu_scale.py [--dtypes float16,bfloat16] [--repeats 10] [--eval] [--out FILE]

and at reduced size on a CPU (what tests/test_gpu_scale.py runs):

    python benchmarks/gpu_scale.py --smoke --device cpu --dtypes float32,bfloat16 --eval --eval-images 2
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from routes import (
    FULL, SMOKE, Size, build_inputs, build_model, decode_arms, measure, prefill_arms, prefill_cache, routes, sinks_found,
    summary, sync, var_stack,
)
from shared_prefix import NEW_TOKENS, llava_batch, llava_model_and_prompts, llava_runner
from timing import emit

import sinklens as sl
from sinklens.run import PrefixStore

HALF_FACTOR = 2.0  # rows-vs-eager VAR difference allowed, as a multiple of plain sdpa-vs-eager
FLOAT32_TOLERANCE = 1e-4
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


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


def run_dtype(
    model: Any, dtype: torch.dtype, device: str, repeats: int, decode_repeats: int, size: Size
) -> dict[str, Any]:
    inputs = build_inputs(size, device, dtype)
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


def eval_split(size: Size, device: str, images: int, batch: int) -> dict[str, Any]:
    """A POPE-shaped split in bfloat16 with FindSinks + VAR on the rows route: shared prefixes, then whole prompts."""
    loaded, prompts = llava_model_and_prompts(size, images, torch.bfloat16, device, attention="rows")
    runner = llava_runner(loaded)
    stack = [sl.FindSinks(dims=(size.sink_dim,), tau=size.tau), sl.VAR()]
    report: dict[str, Any] = {"images": images, "questions": len(prompts), "batch": batch, "dtype": "bfloat16",
                              "attention": "rows", "new_tokens": NEW_TOKENS}  # fmt: skip
    answers = {}
    for arm in ("shared", "whole"):
        store = PrefixStore.for_stack(stack, capacity=batch + 1) if arm == "shared" else None
        kwargs = {"prefixes": store} if store is not None else {}
        sync(device)
        started = time.perf_counter()
        tokens: list[list[int]] = []
        for start in range(0, len(prompts), batch):
            inputs = llava_batch(prompts[start : start + batch])
            tokens += runner.generate(inputs, stack, max_new_tokens=NEW_TOKENS, **kwargs).tokens
        sync(device)
        seconds = time.perf_counter() - started
        answers[arm] = tokens
        report[arm] = {"seconds": round(seconds, 2), "examples_per_second": round(len(prompts) / seconds, 2)}
        _log(f"eval {arm}: {seconds:.1f}s for {len(prompts)} questions")
    report["speedup"] = round(report["whole"]["seconds"] / report["shared"]["seconds"], 3)
    report["same_answers"] = answers["shared"] == answers["whole"]
    report["agreeing_answers"] = sum(a == b for a, b in zip(answers["shared"], answers["whole"]))
    report["goal_whole_split_s"] = 60.0
    return report


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    *, dtypes: list[str], device: str, smoke: bool, repeats: int, decode_repeats: int, eval_images: int = 0,
    eval_batch: int = 16,
) -> dict[str, Any]:
    import nnsight
    import transformers

    size = SMOKE if smoke else FULL
    started = time.perf_counter()
    report: dict[str, Any] = {
        "model": "LlavaForConditionalGeneration from llava-1.5-7b's configuration, random weights"
        + (" (smoke size: reduced widths and layers)" if smoke else ""),
        "size": asdict(size),
        "prompt": {"tokens": 1 + 4 + size.image_tokens + 70, "image_tokens": size.image_tokens, "text_after_image": 70},
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
    if eval_images:
        del model
        report["eval"] = eval_split(size, device, eval_images, eval_batch)
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The rows route at LLaVA-1.5-7B's full configuration (see module doc).")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated: float16, bfloat16, float32")
    parser.add_argument("--smoke", action="store_true", help="reduced size, for a CPU run")
    parser.add_argument("--repeats", type=int, default=10, help="timed prefill rounds per arm (after 2 warm-up)")
    parser.add_argument("--decode-repeats", type=int, default=20, help="timed decoding steps per arm (after 2 warm-up)")
    parser.add_argument("--eval", action="store_true", help="also the eval arm: a POPE-shaped split, shared vs whole")
    parser.add_argument("--eval-images", type=int, default=500, help="images of the eval arm, 6 questions each (500)")
    parser.add_argument("--eval-batch", type=int, default=16, help="questions per generate call in the eval arm (16)")
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
    report = run(dtypes=dtypes, device=args.device, smoke=args.smoke, repeats=args.repeats,
                 decode_repeats=args.decode_repeats, eval_images=args.eval_images if args.eval else 0,
                 eval_batch=args.eval_batch)  # fmt: skip
    emit(report, args.out)


if __name__ == "__main__":
    main()
