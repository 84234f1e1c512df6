"""Time a benchmark's arms against each other: interleaved rounds, repeats, ratios; peak memory in a process of its own.

An arm is a name, an untimed setup and a timed call. `measure` runs every arm
once per round, in an order rotated each round (so drift and warm caches favour
no arm), drops the warm-up rounds and keeps the wall and process-CPU time of
each call. `compare` turns two arms' times into ratios::

    arms = [Arm("plain", lambda: runner.forward(inputs)), Arm("var", lambda: runner.forward(inputs, stack))]
    timings = measure(arms, rounds=5, warmup=1)
    compare(timings, "var", base="plain")["ratio"]

An arm that times parts of its own call (each decoding step inside one generate
call) returns `Clocked(output, wall, cpu)`: its samples replace the call's time.
Samples are paired across arms by (round, index), which is fair because the
arms of one round run back to back.

`run_alone(factory)` builds an arm in a fresh process (spawned: nothing shared
with this one) and reports its peak resident memory before and after the call,
so each arm's memory is measured without the others' allocations; `factory`
must be picklable (a module-level function, or a `functools.partial` of one).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any


@dataclass(frozen=True)
class Arm:
    """One thing to time: `run` is called once per round, after `setup` (untimed)."""

    name: str
    run: Callable[[], Any]
    setup: Callable[[], None] | None = None


@dataclass(frozen=True)
class Clocked:
    """The return value of an arm that times itself: its output and its own (wall, CPU) samples in seconds."""

    output: Any
    wall: Sequence[float]
    cpu: Sequence[float]


@dataclass
class Timings:
    """Per arm, per timed round, the samples of that round (one, or an arm's own `Clocked` samples)."""

    wall: dict[str, list[list[float]]] = field(default_factory=dict)
    cpu: dict[str, list[list[float]]] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)  # each arm's output of its last call

    def samples(self, arm: str, clock: str = "wall") -> list[float]:
        return [t for round_ in getattr(self, clock)[arm] for t in round_]


def measure(arms: Sequence[Arm], rounds: int, warmup: int) -> Timings:
    """Every arm once per round, the order rotated each round; the first `warmup` rounds are not kept."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds} and {warmup}")
    if len({arm.name for arm in arms}) != len(arms):
        raise ValueError(f"arm names repeat: {[arm.name for arm in arms]}")
    timings = Timings(wall={arm.name: [] for arm in arms}, cpu={arm.name: [] for arm in arms})
    for round_ in range(warmup + rounds):
        shift = round_ % len(arms)
        for arm in [*arms[shift:], *arms[:shift]]:
            if arm.setup is not None:
                arm.setup()
            wall, cpu = time.perf_counter(), time.process_time()
            output = arm.run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if isinstance(output, Clocked):
                wall, cpu, output = list(output.wall), list(output.cpu), output.output
            else:
                wall, cpu = [wall], [cpu]
            timings.last[arm.name] = output
            if round_ >= warmup:
                timings.wall[arm.name].append(wall)
                timings.cpu[arm.name].append(cpu)
    return timings


def paired_ratios(timings: Timings, arm: str, base: str, clock: str = "wall") -> list[float]:
    """`arm`'s sample over `base`'s taken in the same round at the same index."""
    rounds = zip(getattr(timings, clock)[arm], getattr(timings, clock)[base], strict=True)
    return [a / b for ours, theirs in rounds for a, b in zip(ours, theirs, strict=True)]


def compare(timings: Timings, arm: str, base: str) -> dict[str, Any]:
    """Median seconds of both arms and the ratios of `arm` over `base`.

    `ratio`: of the medians of wall time; `paired_ratio` (and its `min`/`max`):
    of same-round samples, robust to load that changes between rounds;
    `cpu_ratio`: of the medians of process CPU time, less sensitive to other
    processes on a shared machine.
    """
    paired = paired_ratios(timings, arm, base)
    median = {clock: {name: statistics.median(timings.samples(name, clock)) for name in (arm, base)}
              for clock in ("wall", "cpu")}  # fmt: skip
    return {
        "arm_s": round(median["wall"][arm], 4),
        "base_s": round(median["wall"][base], 4),
        "ratio": round(median["wall"][arm] / median["wall"][base], 4),
        "paired_ratio": round(statistics.median(paired), 4),
        "paired_ratio_min": round(min(paired), 4),
        "paired_ratio_max": round(max(paired), 4),
        "cpu_ratio": round(median["cpu"][arm] / median["cpu"][base], 4),
    }


# ---- an arm in a process of its own ---------------------------------------------------------------


def run_alone(factory: Callable[[], Arm], calls: int = 1) -> dict[str, Any]:
    """Build the arm `factory()` returns in a fresh process, call it `calls` times; its times and peak memory.

    `peak_rss_before_mib` is the process's resident memory once the arm is built
    (model loaded; on Linux the peak is reset there, so building does not hide the
    arm's peak), `peak_rss_mib` the peak during its calls: the arm's own peak
    shows as the difference. On a CUDA
    device, `cuda_peak_mib` is torch's peak allocation during the calls.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_alone, factory, calls).result()


def _peak_rss_mib(*, reset: bool = False) -> float:
    """The process's peak resident memory in MiB; `reset` first lowers it to the current size (Linux).

    A spawned child inherits its parent's ru_maxrss on Linux, so there the peak is
    read from /proc/self/status (VmHWM), which /proc/self/clear_refs resets.
    """
    import resource
    import sys
    from pathlib import Path

    status = Path("/proc/self/status")
    if status.exists():
        if reset:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**10, 1)  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _alone(factory: Callable[[], Arm], calls: int) -> dict[str, Any]:
    arm = factory()
    cuda = _cuda_reset()
    before = _peak_rss_mib(reset=True)
    wall: list[float] = []
    for _ in range(calls):
        if arm.setup is not None:
            arm.setup()
        started = time.perf_counter()
        output = arm.run()
        wall += list(output.wall) if isinstance(output, Clocked) else [time.perf_counter() - started]
    report = {"arm": arm.name, "wall_s": [round(t, 4) for t in wall], "peak_rss_before_mib": before,
              "peak_rss_mib": _peak_rss_mib()}  # fmt: skip
    if cuda is not None:
        report["cuda_peak_mib"] = round(cuda.max_memory_allocated() / 2**20, 1)
    return report


def _cuda_reset() -> Any:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda


def emit(report: dict[str, Any], out: Any = None) -> None:
    """Print a benchmark's JSON report, and write it to `out` (a Path) when given."""
    import json

    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
