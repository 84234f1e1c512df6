"""POPE evaluation that resumes, and sink-dimension discovery, on tiny-llava (fast, planted sinks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sinklens.cli import main
from sinklens.eval import pope as pope_eval
from sinklens.eval.discovery import discover, scan_prompts
from sinklens.eval.folder import ResumeMismatchError
from sinklens.eval.loop import Options, evaluate

from oracle_var import language_model


def run_pope(tiny, runner, questions, out, *, batch_size=1, max_new_tokens=3, **kwargs):
    """`evaluate` on a POPE benchmark, quietly."""
    options = Options(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    return evaluate(tiny, runner, questions, out=out, options=options, **kwargs)



def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "pope.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def clean_run(tiny, runner, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    metrics = run_pope(tiny, runner, pope_eval.synthetic("adversarial", 6), out)
    return out, metrics


def test_every_example_is_one_line_and_metrics_match_them(clean_run):
    out, metrics = clean_run
    rows = _rows(out)
    assert [r["id"] for r in rows] == [e.id for e in pope_eval.pope("adversarial", 6)]
    correct = sum(r["label"] == r["prediction"] for r in rows)
    assert metrics["accuracy"] == correct / 6 and metrics["n"] == 6
    assert json.loads((out / "pope.json").read_text())["accuracy"] == metrics["accuracy"]


def test_an_interrupted_run_resumes_where_it_stopped(tiny, runner, clean_run, tmp_path):
    calls = []

    def interrupt_after_three(row):
        calls.append(row["id"])
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pope(tiny, runner, pope_eval.synthetic("adversarial", 6), tmp_path, on_example=interrupt_after_three)  # fmt: skip
    assert len(_rows(tmp_path)) == 3 and not (tmp_path / "pope.json").exists()
    resumed = []
    metrics = run_pope(tiny, runner, pope_eval.synthetic("adversarial", 6), tmp_path, on_example=lambda row: resumed.append(row["id"]))  # fmt: skip
    assert resumed == [e.id for e in pope_eval.pope("adversarial", 6)[3:]]  # nothing asked twice
    assert _rows(tmp_path) == _rows(clean_run[0])
    # the metrics of all six rows; how this run answered: three questions, from one shared image prefix
    assert metrics["prefix_sharing"] == {"shared": True, "questions": 3, "prefixes": 1}
    assert {**metrics, "prefix_sharing": None} == {**clean_run[1], "prefix_sharing": None}


def test_a_torn_last_line_is_dropped_and_redone(tiny, runner, clean_run, tmp_path):
    run_pope(tiny, runner, pope_eval.synthetic("adversarial", 4), tmp_path)
    with (tmp_path / "pope.jsonl").open("a") as f:
        f.write('{"id": "adversarial-1-1y", "sce')  # a crash in the middle of a write
    run_pope(tiny, runner, pope_eval.synthetic("adversarial", 6), tmp_path)
    assert _rows(tmp_path) == _rows(clean_run[0])


@pytest.mark.slow  # a subprocess, killed mid-run
def test_a_killed_process_loses_nothing(clean_run, tmp_path):
    """SIGKILL the CLI mid-run (no clean-up runs), then finish in-process: same rows as a clean run."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "sinklens", "eval", "pope", "--model", "tiny-llava", "--split", "adversarial",
               "--n", "6", "--out", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_file = tmp_path / "pope.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if rows_file.is_file() and rows_file.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    killed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed, "the run finished before it could be killed; nothing was tested"
    assert main(["eval", "pope", "--model", "tiny-llava", "--split", "adversarial", "--n", "6",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    assert _rows(tmp_path) == _rows(clean_run[0])


def test_a_run_with_other_settings_is_refused(tiny, runner, clean_run, capsys):
    out = clean_run[0]
    from sinklens.interventions import VAR, FindSinks

    with pytest.raises(ResumeMismatchError, match="differing: stack"):
        run_pope(tiny, runner, pope_eval.synthetic("adversarial", 6), out, interventions=[FindSinks(), VAR()])  # fmt: skip
    assert main(["eval", "pope", "--model", "tiny-llava", "--split", "random", "--n", "2", "--out", str(out)]) == 2
    assert "--restart" in capsys.readouterr().err


def test_cli_eval_pope_with_var_and_restart(tmp_path, capsys):
    args = ["eval", "pope", "--model", "tiny-llava", "--n", "4", "--var", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "pope.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio", "n"):
        assert key in result
    assert result["n"] == 4 and "VAR(" in result["stack"][1]
    assert main(args[:-2] + ["--tau", "10", "--restart", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "pope.json").read_text())["params"]["tau"] == 10


def test_discovery_finds_the_planted_dimension(tiny, runner):
    result = discover(tiny, runner, n_prompts=2, progress=False)
    assert result["sink_dims"] == [7]
    assert result["registry_dims"] == [7]  # the registry is reported, not used
    layer = result["per_layer"][3]
    assert layer["phi_first_token"] > result["threshold"] > layer["max_other_dim_magnitude"]


def test_discovery_reads_data_not_the_registry(tiny, runner):
    """Planting the BOS value in another dimension moves what discovery finds."""
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.models import load

    other = load("tiny-llava")
    with torch.no_grad():
        embed = language_model(other.model).embed_tokens.weight
        bos = other.text_config.bos_token_id
        embed[bos, 100], embed[bos, 7] = embed[bos, 7].item(), embed[bos, 100].item()
    result = discover(other, NnsightRunner(other), n_prompts=2, progress=False)
    assert result["sink_dims"][0] == 100


def test_scan_marks_the_first_token_and_delimiters(tiny, runner):
    scanned = scan_prompts(tiny, runner, 1, progress=False)
    candidates, ids = scanned["candidates"][0], scanned["input_ids"][0]
    assert candidates[0]
    assert not candidates[torch.tensor(ids) == tiny.image_token_id].any()
    assert scanned["magnitudes"].shape[:2] == (1, tiny.n_layers)


def test_cli_discover_writes_json_and_figure(tmp_path, capsys):
    assert main(["discover-sink-dims", "--model", "tiny-llava", "--prompts", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sink_dims.json").read_text())
    assert result["sink_dims"] == [7] and len(result["per_layer"]) == 6
    assert (tmp_path / "sink_dims.png").stat().st_size > 10_000
    assert "[7]" in capsys.readouterr().out


def test_captions_are_scored_per_attribute(tiny, runner):
    from sinklens.data.scenes import scene
    from sinklens.eval.captions import evaluate_captions

    result = evaluate_captions(tiny, runner, n=2, options=Options(max_new_tokens=4, progress=False))
    assert set(result["accuracy"]) == {"shape_recall", "shape_precision", "count", "background", "colour", "size", "position"}
    assert [row["truth"] for row in result["rows"]] == [scene("heldout", i).caption() for i in range(2)]
    assert all(0.0 <= value <= 1.0 for value in result["accuracy"].values())
    with pytest.raises(ValueError, match="n must be >= 1"):
        evaluate_captions(tiny, runner, n=0)


def test_cli_eval_pope_with_vcd(tmp_path):
    assert main(["eval", "pope", "--model", "tiny-llava", "--n", "2", "--vcd", "--vcd-beta", "0.5", "--var",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "pope.json").read_text())
    assert result["n"] == 2 and result["stack"][2].startswith("VCD(alpha=1.0, beta=0.5")


def test_cli_eval_captions_writes_every_caption_and_the_means(tmp_path, capsys):
    assert main(["eval", "captions", "--model", "tiny-llava", "--n", "2", "--max-new-tokens", "4",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "captions.json").read_text())
    assert result["n"] == 2 and len(result["rows"]) == 2 and result["params"]["tau"] > 0
    row = result["rows"][0]
    from sinklens.data.questions import score_caption
    from sinklens.data.scenes import scene

    assert row["score"] == score_caption(scene("heldout", 0), row["caption"])  # the scores are the scorer's
    assert result["accuracy"]["background"] == sum(r["score"]["background"] for r in result["rows"]) / 2
    assert "captions.json" in capsys.readouterr().out
    assert main(["eval", "captions", "--model", "tiny-llava", "--n", "0", "--out", str(tmp_path)]) == 2
    assert "--n must be >= 1, got 0" in capsys.readouterr().err
