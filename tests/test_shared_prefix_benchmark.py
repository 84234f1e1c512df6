"""benchmarks/shared_prefix.py runs end to end at smoke size: every arm, the ratios, the ideal, peak memory.

No timing is asserted (speed is measured by the script, not by tests): only that
every arm answers, shared arms give the whole arms' answers (the script checks
it), and the report has its keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import shared_prefix  # noqa: E402

pytestmark = pytest.mark.slow  # toy-llava and a LLaVA-1.5-shaped model, every arm twice


def test_the_benchmark_reports_every_ratio_and_its_ideal(tmp_path):
    report = shared_prefix.main(["--smoke", "--no-memory", "--images", "1", "--out", str(tmp_path / "report.json")])
    assert (tmp_path / "report.json").is_file()
    for name in ("toy_llava", "llava15_shape"):
        section = report[name]
        assert set(report[f"{name}_ratio"]) == {"batch_1", "batch_8"}
        assert all(set(by_stack) == {"plain", "findsinks_var"} for by_stack in report[f"{name}_ratio"].values())
        assert section["questions"] == 6 and section["ideal_ratio"] > 1
        assert len(section["seconds"]) == 8 and all(s["min"] > 0 for s in section["seconds"].values())


def test_each_arm_reports_its_own_peak_memory():
    section = shared_prefix.report_section("llava15_shape", images=1, layers=1, rounds=1, smoke=True, memory=True)
    assert len(section["peak_rss_mib"]) == 8 and all(peak > 0 for peak in section["peak_rss_mib"].values())
    assert set(section["memory_ratio_shared_over_whole"]) == {"batch_1", "batch_8"}
