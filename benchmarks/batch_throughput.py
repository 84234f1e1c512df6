"""Examples per second of a POPE evaluation at batch 1, 4 and 8, as ratios to batch 1, from one run.

    OMP_NUM_THREADS=1 python benchmarks/batch_throughput.py [--model toy-llava] [--n 16] [--var] [--rounds 2]

Each batch size answers the same `n` synthetic POPE questions (held-out scenes)
through `evaluate_pope`'s path: `lm.prepare_batch` (left padding) and
`NnsightRunner.generate` with FindSinks (and VAR with `--var`), 3 new tokens.
Batch sizes run interleaved, in a rotating order, `--rounds` times, so drift in
the machine's load falls on all of them alike; the median time per batch size
is reported. Nothing is written to disk except `--out` (JSON), if given.

Ratios are what this script is for: absolute examples/s depend on the machine
and on what else runs on it (the JSON records the load average at start and end).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import sinklens as sl
from sinklens.data.pope import pope
from sinklens.data.scenes import scene

SIZES = (1, 4, 8)


def answer_all(lm, runner, items, stack, batch_size: int) -> list[str]:
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        inputs = lm.prepare_batch(items[start : start + batch_size])
        answers += runner.generate(inputs, stack, max_new_tokens=3).texts
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-llava")
    parser.add_argument("--n", type=int, default=16, help="questions per batch size and round (default 16)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--var", action="store_true", help="FindSinks + VAR (default: FindSinks only)")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the numbers")
    args = parser.parse_args()

    lm = sl.load(args.model)
    runner = sl.NnsightRunner(lm)
    stack = [sl.FindSinks(), sl.VAR()] if args.var else [sl.FindSinks()]
    items = [(scene("heldout", e.scene_index).image(), e.question) for e in pope("random", args.n)]
    answer_all(lm, runner, items[:2], stack, 2)  # warm-up: first-call costs fall on no arm
    load_start = os.getloadavg()
    times: dict[int, list[float]] = {size: [] for size in SIZES}
    answers: dict[int, list[str]] = {}
    for round_ in range(args.rounds):
        order = SIZES[round_ % len(SIZES):] + SIZES[: round_ % len(SIZES)]
        for size in order:
            started = time.perf_counter()
            answers[size] = answer_all(lm, runner, items, stack, size)
            times[size].append(time.perf_counter() - started)
    load_end = os.getloadavg()
    median = {size: statistics.median(times[size]) for size in SIZES}
    rate = {size: args.n / median[size] for size in SIZES}
    same = all(answers[size] == answers[1] for size in SIZES)
    print(f"{lm.name}, {'FindSinks + VAR' if args.var else 'FindSinks'}, n = {args.n}, {args.rounds} rounds, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {load_start[0]:.1f} -> {load_end[0]:.1f}")  # fmt: skip
    for size in SIZES:
        print(f"batch {size}: {rate[size]:.2f} examples/s, {rate[size] / rate[1]:.2f}x batch 1")
    print(f"answers identical at every batch size: {same}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "model": lm.name, "var": args.var, "n": args.n, "rounds": args.rounds, "seconds": times,
            "examples_per_second": rate, "ratio_to_batch_1": {s: rate[s] / rate[1] for s in SIZES},
            "answers_identical": same, "load_average_start": load_start, "load_average_end": load_end,
        }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
