"""benchmarks/timing.py: rotation of the arms, pairing of samples, ratios, and an arm run alone for its memory.

No timing is asserted: arms that time themselves (`Clocked`) give fixed samples.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from timing import Arm, Clocked, compare, measure, paired_ratios, run_alone  # noqa: E402


def _clocked(samples: list[float], calls: list[str], name: str) -> Clocked:
    calls.append(name)
    return Clocked(output=name, wall=samples, cpu=[2 * s for s in samples])


def test_arms_rotate_every_round_and_warm_up_rounds_are_dropped():
    calls: list[str] = []
    arms = [Arm(name, partial(_clocked, [1.0], calls, name)) for name in ("a", "b", "c")]
    timings = measure(arms, rounds=3, warmup=1)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {name: len(rounds) for name, rounds in timings.wall.items()} == {"a": 3, "b": 3, "c": 3}
    assert timings.last == {"a": "a", "b": "b", "c": "c"}


def test_setup_runs_before_every_call_untimed():
    calls: list[str] = []
    arm = Arm("a", partial(_clocked, [1.0], calls, "run"), setup=partial(calls.append, "setup"))
    measure([arm], rounds=2, warmup=0)
    assert calls == ["setup", "run", "setup", "run"]


def test_ratios_pair_samples_of_the_same_round():
    calls: list[str] = []
    base = Arm("plain", partial(_clocked, [1.0, 2.0, 4.0], calls, "plain"))
    arm = Arm("var", partial(_clocked, [1.5, 2.0, 4.4], calls, "var"))
    timings = measure([base, arm], rounds=2, warmup=0)
    assert paired_ratios(timings, "var", "plain") == pytest.approx([1.5, 1.0, 1.1] * 2)
    got = compare(timings, "var", base="plain")
    assert got["base_s"] == 2.0 and got["arm_s"] == 2.0 and got["ratio"] == 1.0
    assert (got["paired_ratio"], got["paired_ratio_min"], got["paired_ratio_max"]) == (1.1, 1.0, 1.5)
    assert got["cpu_ratio"] == 1.0  # cpu samples are twice the wall samples in both arms


def test_bad_rounds_and_repeated_names_are_refused():
    arm = Arm("a", lambda: None)
    with pytest.raises(ValueError, match="rounds"):
        measure([arm], rounds=0, warmup=0)
    with pytest.raises(ValueError, match="repeat"):
        measure([arm, arm], rounds=1, warmup=0)


def _allocate(mib: int) -> int:
    return len(bytearray(mib * 2**20))


def _allocating_arm(mib: int) -> Arm:
    return Arm(f"allocate {mib} MiB", partial(_allocate, mib))


@pytest.mark.slow  # a child process
def test_an_arm_run_alone_reports_its_peak_memory():
    report = run_alone(partial(_allocating_arm, 256))
    assert report["arm"] == "allocate 256 MiB" and len(report["wall_s"]) == 1
    assert report["peak_rss_mib"] - report["peak_rss_before_mib"] >= 200
