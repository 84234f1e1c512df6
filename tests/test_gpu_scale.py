"""The route benchmarks run end to end on a CPU at reduced size (benchmarks/gpu_scale.py --smoke, routes.py).

No timing is asserted: only that every arm runs, the report has its keys, and
the rows route agrees with eager (fp32: within 1e-4 through the smoke model;
bf16: the greedy token and the kernel-difference yardstick of gpu_scale.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_scale  # noqa: E402
import routes  # noqa: E402

pytestmark = pytest.mark.slow  # builds models of each route and runs one arm per subprocess (make test-fast skips it)


@pytest.fixture(scope="module")
def report():
    return gpu_scale.run(dtypes=["float32", "bfloat16"], device="cpu", smoke=True, repeats=1, decode_repeats=1)


def test_smoke_run_reports_every_arm_and_ratio(report):
    assert set(report["dtypes"]) == {"float32", "bfloat16"}
    assert report["prompt"]["image_tokens"] == 576
    for result in report["dtypes"].values():
        for case in ("prefill", "decode_step"):
            assert set(result[case]["seconds"]) == set(routes.ARMS)
            for ratio in result[case]["ratios"].values():
                assert set(ratio) == {"of_minimums", "min", "median", "max"} and ratio["of_minimums"] > 0
        assert result["sinks_per_layer"] and all(0 in positions for positions in result["sinks_per_layer"].values())
        assert result["image_centric_pairs"] > 0  # VAR edited rows, so the agreement below means something


def test_rows_route_agrees_with_eager_in_the_smoke_model(report):
    float32 = report["dtypes"]["float32"]["agreement"]
    assert float32["max_abs_logit_diff_var_rows_vs_var_eager"] <= 1e-4 and float32["met"]
    bfloat16 = report["dtypes"]["bfloat16"]["agreement"]
    assert bfloat16["same_greedy_token"]


def test_memory_of_one_arm_in_this_process():
    peaks = routes.memory_of_arm("var_rows", 336, 3, smoke=True)
    # at smoke size the run may fit in memory the process already holds: "over" can be 0, never negative
    for case in ("prefill", "decode_step"):
        assert peaks[f"{case}_peak_bytes"] >= peaks[f"{case}_over_weights_bytes"] >= 0
        assert peaks[f"{case}_peak_bytes"] > 10**6


def test_var_overhead_routes_section_at_smoke_size():
    """The CPU routes section of var_overhead.py: both shapes, every arm, memory per arm in its own process."""
    import var_overhead

    assert routes.cpu_size(routes.CPU_SHAPES["llava_next_7b"], 1).image_tokens == 2916  # LLaVA-NeXT-7B's length
    # one shape here (the other only changes the image side; a CPU needs minutes for it even at smoke size)
    section = routes.cpu_section(layers={"llava_1_5_7b": 2}, repeats=1, decode_repeats=1, memory=True, smoke=True)
    data = section["shapes"]["llava_1_5_7b"]
    assert data["image_tokens"] == 576 and data["prompt_tokens"] == 651
    assert set(data["peak_memory"]) == set(routes.ARMS)
    assert data["var_arithmetic"]["prefill"]["pattern_rows"] == 70  # the 70 text tokens after the image
    keys = {key: [case, ratio] for key, (case, ratio) in var_overhead.ROUTE_KEYS.items()}
    assert set(keys) == {"rows_prefill_ratio", "rows_decode_ratio", "eager_prefill_ratio", "eager_decode_ratio"}


def test_the_eval_arm_answers_a_split_shared_and_whole_alike_at_smoke_size():
    """The eval arm (a POPE-shaped split, bf16, FindSinks + VAR on the rows route) runs on a CPU: both arms answer
    every question, with the same answers, and the report has its keys."""
    result = gpu_scale.eval_split(routes.SMOKE, "cpu", images=2, batch=4)
    assert result["questions"] == 12 and result["same_answers"] and result["agreeing_answers"] == 12
    assert result["shared"]["seconds"] > 0 and result["whole"]["examples_per_second"] > 0 and result["speedup"] > 0
