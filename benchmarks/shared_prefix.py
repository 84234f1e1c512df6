"""Shared image prefixes against running every question whole: examples per second, from one run.

    OMP_NUM_THREADS=2 python benchmarks/shared_prefix.py [--sections toy_llava,llava15_shape] [--rounds 15] [--out FILE]

A POPE-shaped workload: every image is asked six yes/no questions (3 new
tokens each, greedy), through `NnsightRunner.generate` as `sinklens eval`
calls it. Per model, eight arms, all on the same questions:

    {batch 1, batch 8} x {no stack, FindSinks + VAR} x {whole prompts, shared prefixes}

An arm answers the whole workload in batches (with shared prefixes, through a
fresh `PrefixStore` each time, so the arm computes every prefix itself). The
arms run interleaved, the order rotated every round, after one warm-up round;
min / median / max seconds per arm are reported. `<model>_ratio` is, per batch
size and stack, the whole arm's minimum time over the shared arm's (examples/s
shared over examples/s whole); `ideal_ratio` is the limit, the prompt tokens
per question over the tokens computed per question when sharing (the prefix
once per image, every suffix), which leaves out the decoding steps both pay.
Each arm also runs once in a process of its own for its peak memory.

Models: `toy_llava` (the built-in: 256 image tokens) and `llava15_shape`
(LLaVA-1.5-7B's language model width, heads and MLP with random weights, 576
image tokens, about 40 text tokens around them, a small vision tower and
`--llava-layers` decoder layers, 2 by default, to fit a 2-core machine; a
BOS sink is planted as in benchmarks/routes.py). Ratios are what this is for:
absolute times depend on the machine (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import routes  # noqa: E402  (LLaVA-1.5-7B's configuration and the planted sink)
from timing import Arm, emit, measure, run_alone  # noqa: E402

import sinklens as sl  # noqa: E402
from sinklens.backends.nnsight_backend import wrap  # noqa: E402
from sinklens.run import PrefixStore  # noqa: E402

QUESTIONS_PER_IMAGE = 6
NEW_TOKENS = 3
BATCHES = (1, 8)
STACKS = ("plain", "findsinks_var")
TOY_QUESTIONS = [
    "Is there a circle in the image? Answer yes or no.", "Is there a red square in the image? Answer yes or no.",
    "Is there a triangle? Answer yes or no.", "Is there a blue star in the picture? Answer yes or no.",
    "Is there a green disk in the image? Answer with one word.", "Is there a box? Answer yes or no.",
]  # fmt: skip


class IdTokenizer:
    """What generation needs of a tokenizer for token ids made here: EOS, padding, and a readable decode."""

    eos_token_id, pad_token_id, padding_side = 2, routes.PAD, "left"

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


def stack_of(name: str, sinks: Any = None) -> list[Any]:
    """No stack, or FindSinks + VAR (`sinks`: FindSinks' dims and tau where the model has none registered)."""
    if name == "plain":
        return []
    return [sl.FindSinks(**(sinks or {})), sl.VAR()]


# ---- the two models and their workloads ----------------------------------------------------------------


def toy_workload(images: int) -> tuple[Any, list[tuple[Any, str]]]:
    from sinklens.data.scenes import scene

    lm = sl.load("toy-llava")
    return lm, [(scene("heldout", k).image(), question) for k in range(images) for question in TOY_QUESTIONS]


def llava_size(layers: int, smoke: bool) -> routes.Size:
    if smoke:
        return replace(routes.cpu_size(336, layers, smoke=True), var_layers=None)
    return replace(routes.cpu_size(336, layers), var_layers=None)


def llava_workload(images: int, layers: int, smoke: bool) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """LLaVA-1.5-7B's shape: BOS, 4 text tokens, 576 image tokens, 30 to 40 question tokens (random ids)."""
    return llava_model_and_prompts(llava_size(layers, smoke), images, torch.float32, "cpu")


def llava_model_and_prompts(
    size: routes.Size, images: int, dtype: torch.dtype, device: str, attention: str = "eager"
) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """A random-weight model of `size` (planted BOS sink) and `images` x 6 prompts of LLaVA-1.5's shape."""
    model = routes.build_model(size, dtype, device)
    loaded = sl.from_hf(model, SimpleNamespace(tokenizer=IdTokenizer()), name="llava-1.5-7b-shape", attention=attention)
    generator = torch.Generator().manual_seed(routes.SEED)
    prompts = []
    for _ in range(images):
        head = [routes.BOS, *torch.randint(3, 31000, (routes.N_TEXT_BEFORE,), generator=generator).tolist()]
        pixels = torch.randn(1, 3, size.image_size, size.image_size, generator=generator).to(device, dtype)
        for k in range(QUESTIONS_PER_IMAGE):
            question = torch.randint(3, 31000, (30 + 2 * k,), generator=generator).tolist()
            prompts.append({"ids": head + [routes.IMAGE_TOKEN] * size.image_tokens + question, "pixels": pixels})
    return loaded, prompts


def llava_runner(loaded: Any) -> Any:
    """nnsight wraps the model without a tokenizer (the ids are made here); sinklens decodes with IdTokenizer."""
    return sl.NnsightRunner(loaded, model=wrap(dataclasses.replace(loaded, processor=routes.NO_PROCESSOR)))


def llava_batch(prompts: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    width = max(len(p["ids"]) for p in prompts)
    device = prompts[0]["pixels"].device
    ids = torch.tensor([[routes.PAD] * (width - len(p["ids"])) + p["ids"] for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p["ids"])) + [1] * len(p["ids"]) for p in prompts], device=device)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat([p["pixels"] for p in prompts])}


# ---- arms -------------------------------------------------------------------------------------------


def answer(loaded: Any, runner: Any, prompts: list[Any], stack_name: str, batch: int, shared: bool, *,
           batch_of: Any, sinks: Any) -> list[list[int]]:  # fmt: skip
    """Every question, `batch` at a time; with `shared`, a fresh store for the whole workload."""
    stack = stack_of(stack_name, sinks)
    store = PrefixStore.for_stack(stack, capacity=batch + 1) if shared else None
    tokens: list[list[int]] = []
    for start in range(0, len(prompts), batch):
        inputs = batch_of(loaded, prompts[start : start + batch])
        kwargs = {"prefixes": store} if store is not None else {}
        tokens += runner.generate(inputs, stack, max_new_tokens=NEW_TOKENS, **kwargs).tokens
    return tokens


def toy_batch(loaded: Any, prompts: list[tuple[Any, str]]) -> Any:
    return loaded.prepare_batch(prompts)


def llava_chunk(loaded: Any, prompts: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return llava_batch(prompts)


def section(name: str, images: int, layers: int, smoke: bool) -> tuple[Any, list[Any], Any, Any]:
    """(model, prompts, how a chunk of prompts becomes inputs, FindSinks' dims and tau)."""
    if name == "toy_llava":
        loaded, prompts = toy_workload(images)
        return loaded, prompts, toy_batch, None
    loaded, prompts = llava_workload(images, layers, smoke)
    size = llava_size(layers, smoke)  # the planted BOS sink's dimension, and a tau below its phi
    return loaded, prompts, llava_chunk, {"dims": (size.sink_dim,), "tau": size.tau}


def arm_name(batch: int, stack: str, shared: bool) -> str:
    return f"batch{batch}_{stack}_{'shared' if shared else 'whole'}"


def make_arms(name: str, images: int, layers: int, smoke: bool) -> tuple[list[Arm], Any, list[Any]]:
    loaded, prompts, batch_of, sinks = section(name, images, layers, smoke)
    runner = sl.NnsightRunner(loaded) if name == "toy_llava" else llava_runner(loaded)
    arms = [
        Arm(arm_name(batch, stack, shared), partial(answer, loaded, runner, prompts, stack, batch, shared,
                                                    batch_of=batch_of, sinks=sinks))  # fmt: skip
        for batch in BATCHES for stack in STACKS for shared in (False, True)
    ]
    return arms, loaded, prompts


def alone_arm(name: str, images: int, layers: int, smoke: bool, arm: str) -> Arm:
    """One arm, built in a process of its own (for its peak memory)."""
    arms, _, _ = make_arms(name, images, layers, smoke)
    return next(a for a in arms if a.name == arm)


# ---- the report -------------------------------------------------------------------------------------


def prompt_tokens(name: str, loaded: Any, prompts: list[Any]) -> tuple[float, float]:
    """(prompt tokens per question, tokens computed per question when every image's prefix is computed once)."""
    if name == "toy_llava":
        lengths = [int(loaded.prepare(*p)["input_ids"].shape[1]) for p in prompts]
        prefix = int((loaded.prepare(*prompts[0])["input_ids"][0] == loaded.image_token_id).nonzero().max()) + 1
    else:
        lengths = [len(p["ids"]) for p in prompts]
        prefix = max(k for k, token in enumerate(prompts[0]["ids"]) if token == routes.IMAGE_TOKEN) + 1
    per_question = statistics.mean(lengths)
    return per_question, prefix / QUESTIONS_PER_IMAGE + (per_question - prefix)


def report_section(name: str, images: int, layers: int, rounds: int, smoke: bool, memory: bool) -> dict[str, Any]:
    arms, loaded, prompts = make_arms(name, images, layers, smoke)
    timings = measure(arms, rounds=rounds, warmup=1)
    for batch in BATCHES:  # the same answers, shared or not
        for stack in STACKS:
            assert timings.last[arm_name(batch, stack, True)] == timings.last[arm_name(batch, stack, False)], (batch, stack)
    seconds = {arm.name: timings.samples(arm.name) for arm in arms}
    per_question, computed = prompt_tokens(name, loaded, prompts)
    ratio = {f"batch_{batch}": {stack: round(min(seconds[arm_name(batch, stack, False)]) /
                                             min(seconds[arm_name(batch, stack, True)]), 3)
                                for stack in STACKS} for batch in BATCHES}  # fmt: skip
    out: dict[str, Any] = {
        "questions": len(prompts),
        "images": images,
        "prompt_tokens_per_question": round(per_question, 1),
        "tokens_computed_per_question_shared": round(computed, 1),
        "ideal_ratio": round(per_question / computed, 3),
        "ratio": ratio,
        "seconds": {arm: {"min": round(min(s), 3), "median": round(statistics.median(s), 3), "max": round(max(s), 3)}
                    for arm, s in seconds.items()},  # fmt: skip
        "examples_per_second_at_min": {arm: round(len(prompts) / min(s), 3) for arm, s in seconds.items()},
    }
    if name == "llava15_shape":
        out["size"] = asdict(llava_size(layers, smoke))
    if memory:
        peaks = {arm.name: run_alone(partial(alone_arm, name, images, layers, smoke, arm.name)) for arm in arms}
        out["peak_rss_mib"] = {arm: peak["peak_rss_mib"] for arm, peak in peaks.items()}
        out["memory_ratio_shared_over_whole"] = {
            f"batch_{batch}": {stack: round(peaks[arm_name(batch, stack, True)]["peak_rss_mib"] /
                                            peaks[arm_name(batch, stack, False)]["peak_rss_mib"], 3) for stack in STACKS}
            for batch in BATCHES
        }  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="toy_llava,llava15_shape")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--images", type=int, default=2, help="images per workload, six questions each (default 2)")
    parser.add_argument("--llava-layers", type=int, default=2, help="decoder layers of the LLaVA-1.5 shape (default 2)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--smoke", action="store_true", help="tiny widths, 2 rounds: checks that the script runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rounds = 2 if args.smoke else args.rounds
    report: dict[str, Any] = {"rounds": rounds, "warmup_rounds": 1, "new_tokens": NEW_TOKENS,
                              "questions_per_image": QUESTIONS_PER_IMAGE, "load_average_start": os.getloadavg(),
                              "torch_threads": torch.get_num_threads(), "smoke": args.smoke}  # fmt: skip
    for name in args.sections.split(","):
        result = report_section(name, args.images, args.llava_layers, rounds, args.smoke, not args.no_memory)
        report[name] = result
        report[f"{name}_ratio"] = result["ratio"]
    report["load_average_end"] = os.getloadavg()
    emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
