"""Every study in studies/ runs in --smoke mode on toy-llava and writes its PNG and the numbers it draws."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {
    "fig1_attention_maps": ("layers", "examples"),
    "fig2_sink_dimensions": ("layer", "tokens", "discovered_sink_dims"),
    "fig3a_phi_vs_attention": ("scatter", "per_layer"),
    "fig3b_sink_ablation": ("rows", "summary"),
    "fig3c_contribution": ("per_layer",),
    "fig3d_maps_without_sinks": ("examples",),
    "fig4_head_ranking": ("ranked", "examples"),
    "sink_frequency_by_layer": ("per_layer",),
    "table_var": ("rows",),
}
pytestmark = [pytest.mark.study, pytest.mark.slow]


def run_study(name: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, str(ROOT / "studies" / f"{name}.py"), "--out", str(out), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", list(STUDIES))
def test_study_smoke(name, tmp_path):
    """A study runs in --smoke mode, and again as a remote request (nnsight's local simulation) with equal numbers."""
    done = run_study(name, tmp_path, "--smoke")  # no time bound here: speed is measured in benchmarks/
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["model"] == "toy-llava" and data["smoke"] is True and data["study"] == name
    for key in STUDIES[name]:
        assert data[key], f"{name}.json has no {key}"
    if name == "table_var":
        assert data["rows"][0]["setting"] == "baseline"
        splits = {row["split"] for row in data["rows"]}
        assert splits == {"random", "popular", "adversarial"}
        for row in data["rows"]:
            assert {"accuracy", "f1", "yes_ratio", "n"} <= set(row)
    if name == "fig3b_sink_ablation":
        assert {"baseline", "visual_sinks", "random"} <= set(data["summary"])

    # the same study as a remote request, under nnsight's local simulation, writes the same numbers
    done = run_study(name, tmp_path / "remote", "--smoke", "--remote", "local")
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads((tmp_path / "remote" / f"{name}.json").read_text())
    assert (data.pop("remote"), remote.pop("remote")) == ("off", "local")
    data.pop("seconds"), remote.pop("seconds")
    assert remote == data


def test_study_refuses_a_bad_n(tmp_path):
    done = run_study("sink_frequency_by_layer", tmp_path, "--n", "0")
    assert done.returncode != 0
    assert "--n must be >= 1, got 0" in done.stderr


def test_every_study_is_tested():
    scripts = {path.stem for path in (ROOT / "studies").glob("*.py") if not path.stem.startswith("_")}
    assert scripts - {"train_toy_llava", "toy_llava_sinks"} == set(STUDIES)  # training, and a study of its own


def _close(a, b, where: str = "") -> None:
    """JSON values equal, floats within 1e-4 (studies round; two routes may round a last digit apart)."""
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= 1e-4, f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{where}: keys"
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: length"
        for index, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", ["fig3b_sink_ablation", "fig4_head_ranking"])
def test_study_on_the_rows_route_gives_the_eager_numbers(name, tmp_path):
    done = run_study(name, tmp_path / "eager", "--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_study(name, tmp_path / "rows", "--smoke", "--attention", "rows")
    assert done.returncode == 0, done.stderr[-3000:]
    eager = json.loads((tmp_path / "eager" / f"{name}.json").read_text())
    rows = json.loads((tmp_path / "rows" / f"{name}.json").read_text())
    assert (eager.pop("attention"), rows.pop("attention")) == ("eager", "rows")
    eager.pop("seconds"), rows.pop("seconds")
    _close(eager, rows)
