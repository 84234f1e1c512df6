"""Benchmark files in the published formats, batching, locked evaluation folders and paired statistics.

Fixtures are written here in the exact formats (POPE's question files: JSON lines
with question_id, image, text, label; a VQA JSON-lines file), with images drawn
in the test. Nothing is downloaded. The model is tiny-llava (planted sinks).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sinklens import VAR, FindSinks
from sinklens.cli import main
from sinklens.data.files import DataFileError, read_pope, read_vqa
from sinklens.data.scenes import scene
from sinklens.data.vqa import normalize_answer, read_letter, read_yes_no, score
from sinklens.eval import pope as pope_eval
from sinklens.eval.folder import FolderBusyError, ResumeMismatchError, RunFolder
from sinklens.eval.stats import bootstrap_ci, mcnemar_exact, paired
from sinklens.builtin import demo_scene
from sinklens.eval.loop import Options, evaluate

def run_pope(tiny, runner, questions, out, *, batch_size=1, max_new_tokens=3, **kwargs):
    """`evaluate` on a POPE benchmark, quietly."""
    options = Options(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    return evaluate(tiny, runner, questions, out=out, options=options, **kwargs)


ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path, k: int = 4) -> list[str]:
    """k COCO-style file names, drawn: tiny-llava's demo scene (white blocks: sinks), mirrored, and scenes."""
    folder.mkdir(parents=True, exist_ok=True)
    demo = demo_scene("tiny-llava")
    pictures = [demo, demo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] + [scene("heldout", i).image() for i in range(k)]
    names = []
    for index, picture in enumerate(pictures[:k]):
        name = f"COCO_val2014_{index + 1:012d}.jpg"
        picture.convert("RGB").save(folder / name, quality=95)
        names.append(name)
    return names


def write_pope(tmp: Path, n: int = 8) -> tuple[Path, Path]:
    """A POPE question file as published (one JSON object per line) and its images folder."""
    images = tmp / "val2014"
    names = _images(images)
    objects = ["red circle", "green box", "person", "dog"]
    lines = [{"question_id": k + 1, "image": names[k % len(names)],
              "text": f"Is there a {objects[k % 4]} in the image?", "label": "yes" if k % 2 == 0 else "no"}
             for k in range(n)]  # fmt: skip
    data = tmp / "coco_pope_random.json"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data, images


def write_vqa(tmp: Path) -> tuple[Path, Path]:
    images = tmp / "images"
    names = _images(images)
    lines = [
        {"image": names[0], "question": "Is there a red circle?", "answer": "yes", "id": "q-yn"},
        {"image": names[1], "question": "What colour is the box?", "choices": ["red", "green", "blue"], "answer": "B"},
        {"image": names[2], "question": "How many objects are there?", "answer": "two"},
        {"image": names[3], "question": "What is this?", "answer": ["circle", "circle", "a circle", "ball"]},
    ]
    data = tmp / "questions.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data, images


def _rows(out: Path, kind: str = "pope") -> list[dict]:
    return [json.loads(line) for line in (out / f"{kind}.jsonl").read_text().splitlines()]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sinklens", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


# --- reading the files ---------------------------------------------------------------------------


def test_a_pope_file_reads_as_published(tmp_path):
    data, images = write_pope(tmp_path)
    questions = read_pope(data, images)
    assert [q.id for q in questions] == [str(k) for k in range(1, 9)]
    assert questions[1].answer == "no" and questions[1].image == images / "COCO_val2014_000000000002.jpg"
    assert questions[0].load_image().size == demo_scene("tiny-llava").size


def _bad_pope(tmp: Path, case: str) -> tuple[Path, Path, str]:
    """A POPE file with one defect on line 3, and the words its error must contain."""
    data, images = write_pope(tmp, 4)
    lines = data.read_text().splitlines()
    line = json.loads(lines[2])
    expect = f"{data}:3"
    if case == "missing image":
        line["image"] = "COCO_val2014_999999999999.jpg"
        expect += ": image " + str(images / line["image"]) + " does not exist"
    elif case == "unreadable image":
        (images / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
        line["image"] = "broken.jpg"
        expect += ": image " + str(images / "broken.jpg") + " cannot be read"
    elif case == "not JSON":
        lines[2] = '{"question_id": 3, "image": '
        expect += ": not a JSON line"
    elif case == "label not yes/no":
        line["label"] = "maybe"
        expect += ': label must be "yes" or "no", got "maybe"'
    elif case == "missing field":
        del line["text"]
        expect += ": missing field 'text'"
    if case != "not JSON":
        lines[2] = json.dumps(line)
    data.write_text("\n".join(lines) + "\n")
    return data, images, expect


BAD_CASES = ["missing image", "unreadable image", "not JSON", "label not yes/no", "missing field"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_pope_data_is_refused_naming_file_and_line_before_any_compute(case, tmp_path, capsys):
    data, images, expect = _bad_pope(tmp_path, case)
    with pytest.raises(DataFileError) as raised:
        read_pope(data, images)
    assert expect in str(raised.value)
    # through the CLI: a one-line error, before the model loads, and an earlier run's rows are kept
    out = tmp_path / "out"
    out.mkdir()
    (out / "pope.jsonl").write_text('{"id": "earlier"}\n')
    code = main(["eval", "pope", "--model", "no-such-model-is-loaded", "--data", str(data), "--images", str(images),
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sinklens: error: ") and expect in err and "Traceback" not in err
    assert (out / "pope.jsonl").read_text() == '{"id": "earlier"}\n'
    assert sorted(p.name for p in out.iterdir()) == ["pope.jsonl"]  # no lock, no settings: nothing touched


@pytest.mark.slow  # two whole eval runs
def test_eval_pope_gives_the_same_answers_with_and_without_shared_prefixes(tmp_path, capsys):
    """Six questions about each of two images and one about a third, batch 4: each image's prefix computed once,
    the rows (order, ids, answers) those of `--no-shared-prefix`, and pope.json says how it went."""
    images = tmp_path / "val2014"
    names = _images(images, 3)
    objects = ["red circle", "green box", "person", "dog", "blue disk", "star"]
    lines = [{"question_id": 10 * k + j, "image": names[k], "text": f"Is there a {objects[j]} in the image?",
              "label": "yes" if j % 2 == 0 else "no"} for k in range(2) for j in range(6)]  # fmt: skip
    lines.append({"question_id": 99, "image": names[2], "text": "Is there a dog in the image?", "label": "no"})
    data = tmp_path / "coco_pope_six.json"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    common = ["eval", "pope", "--model", "tiny-llava", "--data", str(data), "--images", str(images), "--var",
              "--batch-size", "4", "--max-new-tokens", "4"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "shared")]) == 0
    assert main([*common, "--no-shared-prefix", "--out", str(tmp_path / "whole")]) == 0
    shared, whole = _rows(tmp_path / "shared"), _rows(tmp_path / "whole")
    assert [row["id"] for row in shared] == [str(line["question_id"]) for line in lines]
    assert shared == whole
    metrics = {kind: json.loads((tmp_path / kind / "pope.json").read_text()) for kind in ("shared", "whole")}
    assert metrics["shared"]["prefix_sharing"] == {"shared": True, "questions": 13, "prefixes": 3}
    assert metrics["whole"]["prefix_sharing"] == {"shared": False, "questions": 13, "reason": "--no-shared-prefix"}
    capsys.readouterr()


def test_a_latin1_question_file_is_refused_naming_the_line_and_the_encoding(tmp_path, capsys):
    """A POPE file saved as Latin-1 ("café"): a sinklens error naming the file, the line and UTF-8, in the API and
    the CLI (exit 2, one line, before the model loads); a VQA file the same."""
    data, images = write_pope(tmp_path, 3)
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace("Is there a", "Is there a café with a")
    data.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataFileError, match=r"coco_pope_random.json:2: not UTF-8 .*iconv -f latin1 -t utf-8"):
        read_pope(data, images)
    assert main(["eval", "pope", "--model", "no-such-model", "--data", str(data), "--images", str(images),
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ":2: not UTF-8 (byte 0xe9" in err and "Re-save the file as UTF-8" in err
    vqa, vqa_images = write_vqa(tmp_path / "vqa")
    vqa.write_bytes(vqa.read_bytes().replace(b"What is this?", "Qu'est-ce que c'est, ce café ?".encode("cp1252")))
    with pytest.raises(DataFileError, match=r"questions.jsonl:4: not UTF-8"):
        read_vqa(vqa, vqa_images)


def test_a_byte_order_mark_on_the_first_line_is_read_as_utf8(tmp_path):
    data, images = write_pope(tmp_path, 2)
    data.write_bytes(b"\xef\xbb\xbf" + data.read_bytes())
    assert len(read_pope(data, images)) == 2


def test_a_vqa_file_reads_three_answer_types(tmp_path):
    data, images = write_vqa(tmp_path)
    questions = read_vqa(data, images)
    assert [q.kind for q in questions] == ["yes_no", "multiple_choice", "short", "short"]
    assert [q.id for q in questions] == ["q-yn", "2", "3", "4"]  # the id field, else the line number
    assert questions[1].choices == ("red", "green", "blue") and questions[1].answer == "B"


@pytest.mark.parametrize(("line", "expect"), [
    ({"image": "x.jpg", "question": "q", "answer": "a"}, "image"),
    ({"question": "q", "answer": "a"}, "missing field 'image'"),
    ({"image": "COCO_val2014_000000000001.jpg", "question": "q", "answer": "D", "choices": ["a", "b"]}, "letter (A, B)"),
    ({"image": "COCO_val2014_000000000001.jpg", "question": "q", "answer": "A", "choices": ["a"]}, "2-26"),
    ({"image": "COCO_val2014_000000000001.jpg", "question": "", "answer": "a"}, "field 'question' is empty"),
])  # fmt: skip
def test_bad_vqa_lines_are_refused_naming_the_line(line, expect, tmp_path):
    data, images = write_vqa(tmp_path)
    with data.open("a") as f:
        f.write(json.dumps(line) + "\n")
    with pytest.raises(DataFileError, match=f"{data}:5") as raised:
        read_vqa(data, images)
    assert expect in str(raised.value)


# --- scoring -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "normal"), [
    ("Two.", "2"), ("The dog", "dog"), ("black-and-white", "black and white"), ("Yes, it is!", "yes it is"),
    ("3.5", "3.5"), ("1,000", "1000"), ("dont know", "don't know"), ("  A  Red  Ball ", "red ball"),
])  # fmt: skip
def test_vqa_normalisation_by_hand(answer, normal):
    assert normalize_answer(answer) == normal


def test_vqa_scores_computed_by_hand(tmp_path):
    data, images = write_vqa(tmp_path)
    yn, mc, count, many = read_vqa(data, images)
    assert score(yn, "Yes, there is.") == (1.0, "yes") and score(yn, "No.") == (0.0, "no")
    assert score(yn, "There is one.") == (0.0, "")  # neither yes nor no: wrong
    assert score(mc, "B") == (1.0, "B") and score(mc, "(B) green") == (1.0, "B") and score(mc, "Green.") == (1.0, "B")
    assert score(mc, "The answer is C.") == (0.0, "C") and score(mc, "purple") == (0.0, "")
    assert score(count, "Two.")[0] == 1.0 and score(count, "2")[0] == 1.0 and score(count, "three")[0] == 0.0
    # VQAv2: min(1, matches / 3) over the references ("circle" x2 and "a circle" normalise alike: 3 matches)
    assert score(many, "Circle")[0] == 1.0 and score(many, "ball")[0] == pytest.approx(1 / 3)
    assert read_yes_no("NO, it is not") == "no" and read_letter("a", ["x", "y"]) == ""


# --- evaluation end to end -----------------------------------------------------------------------


@pytest.mark.slow  # a subprocess or toy-llava: `make test` runs it, `make test-fast` does not
def test_eval_pope_on_a_published_file_batched_with_var_resumes_after_sigkill(tmp_path):
    """The acceptance command: one line per question, the metrics, and a SIGKILLed run resumed to the same result."""
    data, images = write_pope(tmp_path, 12)
    args = ["eval", "pope", "--model", "tiny-llava", "--data", str(data), "--images", str(images),
            "--batch-size", "4", "--var", "--out"]  # fmt: skip
    clean = tmp_path / "clean"
    assert main(args + [str(clean)]) == 0
    rows = _rows(clean)
    assert [r["id"] for r in rows] == [str(k) for k in range(1, 13)]
    metrics = json.loads((clean / "pope.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio", "n"):
        assert key in metrics
    assert metrics["n"] == 12 and metrics["accuracy"] == sum(r["label"] == r["prediction"] for r in rows) / 12
    settings_written = json.loads((clean / "pope.settings.json").read_text())
    assert "{question}" in settings_written["prompt"] and settings_written["generation"]["decoding"] == "greedy"
    assert settings_written["suffix"] is None and "VAR(" in settings_written["stack"][1]

    killed_out = tmp_path / "killed"
    process = subprocess.Popen(_cli(*args, str(killed_out)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if (killed_out / "pope.jsonl").is_file() and (killed_out / "pope.jsonl").read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    was_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert was_running, "the run finished before it could be killed; nothing was tested"
    assert main(args + [str(killed_out)]) == 0
    assert _rows(killed_out) == rows
    resumed = json.loads((killed_out / "pope.json").read_text())
    assert {k: resumed[k] for k in ("accuracy", "f1", "n")} == {k: metrics[k] for k in ("accuracy", "f1", "n")}


@pytest.mark.slow  # two whole eval runs: `make test` runs it
def test_batch_4_and_batch_1_give_the_same_answers_with_var(tiny, runner, tmp_path):
    data, images = write_pope(tmp_path, 8)
    stack = [FindSinks(), VAR()]
    one = run_pope(tiny, runner, pope_eval.from_file(data, images), tmp_path / "b1", interventions=stack, batch_size=1, max_new_tokens=4)  # fmt: skip
    four = run_pope(tiny, runner, pope_eval.from_file(data, images), tmp_path / "b4", interventions=stack, batch_size=4, max_new_tokens=4)  # fmt: skip
    assert [r["answer"] for r in _rows(tmp_path / "b4")] == [r["answer"] for r in _rows(tmp_path / "b1")]
    assert one["accuracy"] == four["accuracy"]
    # and on the synthetic benchmark
    a = run_pope(tiny, runner, pope_eval.synthetic("random", 6), tmp_path / "s1", interventions=stack)
    b = run_pope(tiny, runner, pope_eval.synthetic("random", 6), tmp_path / "s4", interventions=stack, batch_size=4)  # fmt: skip
    assert _rows(tmp_path / "s1") == _rows(tmp_path / "s4") and a["f1"] == b["f1"]


def test_eval_vqa_scores_every_row_as_the_scorer_does(tmp_path, capsys):
    data, images = write_vqa(tmp_path)
    out = tmp_path / "out"
    assert main(["eval", "vqa", "--model", "tiny-llava", "--data", str(data), "--images", str(images),
                 "--batch-size", "2", "--max-new-tokens", "3", "--out", str(out)]) == 0  # fmt: skip
    rows = _rows(out, "vqa")
    questions = read_vqa(data, images)
    assert [r["id"] for r in rows] == [q.id for q in questions]
    for row, question in zip(rows, questions):
        assert (row["score"], row["read"]) == score(question, row["answer"])
    result = json.loads((out / "vqa.json").read_text())
    assert result["accuracy"] == sum(r["score"] for r in rows) / 4
    assert {k: v["n"] for k, v in result["per_type"].items()} == {"yes_no": 1, "multiple_choice": 1, "short": 2}
    assert result["per_type"]["short"]["accuracy"] == (rows[2]["score"] + rows[3]["score"]) / 2
    assert "A. red\nB. green\nC. blue" in json.dumps(result) or result["choice_suffix"].startswith("Answer with")
    assert "metrics written" in capsys.readouterr().out


# --- evaluation folders: locks, settings, restart -------------------------------------------------


@pytest.mark.slow  # a subprocess or toy-llava: `make test` runs it, `make test-fast` does not
def test_two_concurrent_runs_on_one_folder_the_second_is_refused_at_once(tmp_path):
    out = tmp_path / "out"
    # long enough (80 questions, 8 tokens each) that the other two start, import torch and are refused meanwhile
    args = ["eval", "pope", "--model", "tiny-llava", "--split", "random", "--n", "80", "--max-new-tokens", "8",
            "--out", str(out)]  # fmt: skip
    first = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (out / "pope.lock").is_file():
        time.sleep(0.02)
    while time.monotonic() < deadline and (out / "pope.lock").read_text().strip() != str(first.pid):
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before the second could start"
    second = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=240)
    restart = subprocess.run(_cli(*args, "--restart"), env=_env(), capture_output=True, text=True, timeout=240)
    still_running = first.poll() is None
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-2000:]
    for refused in (second, restart):
        assert refused.returncode == 2
        assert f"is in use by another pope run (pid {first.pid})" in refused.stderr and "Traceback" not in refused.stderr
    assert still_running, "the first run finished while the others were refused: the refusal was not tested"
    rows = _rows(out)
    assert [r["id"] for r in rows] == [e.id for e in pope_eval.pope("random", 80)]  # each once, none lost
    assert "metrics written" in first_out
    assert "Loading" not in second.stderr  # refused before the model loads


@pytest.mark.slow  # a subprocess or toy-llava: `make test` runs it, `make test-fast` does not
def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    code = "import sys, time; from sinklens.eval.folder import RunFolder; RunFolder(sys.argv[1], 'pope').lock(); print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
        RunFolder(tmp_path, "pope").lock()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunFolder(tmp_path, "pope") as folder:
        assert folder.locked


def test_a_run_failing_before_its_first_row_leaves_nothing_that_blocks_the_corrected_rerun(tiny, runner, tmp_path):
    from sinklens.errors import MissingSinksError

    with pytest.raises(MissingSinksError):  # VAR without FindSinks: refused in the first generation
        run_pope(tiny, runner, pope_eval.synthetic("random", 2), tmp_path, interventions=[VAR()])
    assert not (tmp_path / "pope.settings.json").exists() and not (tmp_path / "pope.jsonl").exists()
    result = run_pope(tiny, runner, pope_eval.synthetic("random", 2), tmp_path, interventions=[FindSinks(), VAR()])  # fmt: skip
    assert result["n"] == 2


def test_every_differing_parameter_is_named(tmp_path, capsys):
    base = ["eval", "pope", "--model", "tiny-llava", "--n", "2", "--out", str(tmp_path)]
    assert main(base) == 0
    assert main(base + ["--rho", "0.5"]) == 0  # without --var, rho changes nothing: the run resumes
    assert main(base + ["--tau", "10", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "params.tau: 20.0 in the folder -> 10.0" in err or "params.tau: " in err
    assert "max_new_tokens: 3 in the folder -> 4" in err and "stack" in err
    with RunFolder(tmp_path, "pope") as folder:
        with pytest.raises(ResumeMismatchError, match=r"params\.rho: absent in the folder -> 0\.5"):
            found = json.loads(folder.settings_path.read_text())
            folder.check({**found, "params": {**found["params"], "rho": 0.5}})


def test_an_out_that_is_a_file_is_refused_before_loading(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["eval", "pope", "--model", "no-such-model-is-loaded", "--out", str(target)]) == 2
    assert "is an existing file; give a folder" in capsys.readouterr().err


# --- statistics ----------------------------------------------------------------------------------


def _binomial_two_sided(b: int, c: int) -> float:
    """By hand: the exact two-sided binomial test of b successes in b + c trials at p = 1/2, summing
    every outcome no more likely than the observed one (scipy.stats.binomtest's rule)."""
    n = b + c
    if n == 0:
        return 1.0
    pmf = [Fraction(comb(n, k), 2**n) for k in range(n + 1)]
    return float(min(Fraction(1), sum(p for p in pmf if p <= pmf[b])))


def test_mcnemar_by_hand():
    assert mcnemar_exact(1, 5) == pytest.approx(2 * (1 + 6) / 64)  # 0.21875
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    try:
        from scipy.stats import binomtest
    except ImportError:
        binomtest = None
    for b, c in [(1, 5), (7, 19), (40, 61), (0, 3)]:
        expected = binomtest(b, b + c, 0.5).pvalue if binomtest else _binomial_two_sided(b, c)
        assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_properties(b, c):
    p = mcnemar_exact(b, c)
    assert 0 < p <= 1 and p == mcnemar_exact(c, b)
    assert p == pytest.approx(_binomial_two_sided(b, c), rel=1e-12)  # symmetric null: doubling = summing the rarer outcomes


def test_paired_bootstrap_against_a_naive_loop():
    rng = random.Random(3)
    a = [rng.random() < 0.7 for _ in range(200)]
    b = [x if rng.random() < 0.8 else not x for x in a]
    result = paired(a, b, seed=5)
    assert result["difference"] == pytest.approx(sum(b) / 200 - sum(a) / 200)
    assert result["a_only"] == sum(x and not y for x, y in zip(a, b))
    assert result["ci95"] == paired(a, b, seed=5)["ci95"]  # seeded: the same interval again
    # a naive bootstrap, one resample at a time in plain Python: the same interval up to resampling noise
    naive_rng = random.Random(11)
    diffs = sorted(
        sum(b[i] - a[i] for i in (naive_rng.randrange(200) for _ in range(200))) / 200 for _ in range(4000)
    )
    low, high = diffs[int(0.025 * 4000)], diffs[int(0.975 * 4000) - 1]
    assert result["ci95"][0] == pytest.approx(low, abs=0.012) and result["ci95"][1] == pytest.approx(high, abs=0.012)
    assert low <= result["difference"] <= high
    assert bootstrap_ci([True] * 10, [True] * 10) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same examples"):
        paired(a, b[:-1])


def test_captions_batched_equal_captions_one_at_a_time(tiny, runner):
    from sinklens.eval.captions import evaluate_captions

    one = evaluate_captions(tiny, runner, n=3, options=Options(max_new_tokens=5, progress=False))
    three = evaluate_captions(tiny, runner, n=3, options=Options(max_new_tokens=5, progress=False, batch_size=3))
    assert one == three
