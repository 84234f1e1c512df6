"""Every study in studies/ runs in --smoke mode on toy-llava and writes its PNG and the numbers it draws."""

from __future__ import annotations

import json
import math
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
    "vision_to_language_sinks": ("per_layer", "dimensions", "finding"),
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
    # training, a study of its own, and the script that prints docs/results.md's numbers
    assert scripts - {"train_toy_llava", "toy_llava_sinks", "summarize_results"} == set(STUDIES)


def test_summarize_results_prints_the_committed_runs():
    done = subprocess.run([sys.executable, str(ROOT / "studies" / "summarize_results.py"), str(ROOT / "docs/results/tau16"),
                           str(ROOT / "docs/results/missing")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| VAR paper rho=0.8 p=0.6 |" in done.stdout and "McNemar" in done.stdout
    assert "table_var: missing" in done.stdout  # a folder without runs says so


def _user_images(folder: Path, k: int = 4) -> Path:
    """k images of different sizes and formats, drawn here: a user's own folder."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(k):
        width, height = (200 + 40 * index, 150 + 20 * index)
        image = Image.new("RGB", (width, height), (250, 250, 250))
        ImageDraw.Draw(image).ellipse((20, 20, 20 + 30 * (index + 1), 20 + 30 * (index + 1)), fill=(200, 40, 40))
        image.save(folder / f"photo_{index}.{'png' if index % 2 else 'jpg'}")
    return folder


@pytest.mark.parametrize("name", list(STUDIES))
def test_study_runs_on_a_folder_of_images(name, tmp_path):
    """Every study takes --images DIR and a question template; the JSON says where its prompts came from."""
    images = _user_images(tmp_path / "photos")
    done = run_study(name, tmp_path / "out", "--smoke", "--model", "tiny-llava", "--images", str(images),
                     "--question", "What is in this photo?", "--tau", "10")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert data["model"] == "tiny-llava" and data["prompts"]["images"] == str(images)
    assert data["prompts"]["question"] == "What is in this photo?" and "{question}" in data["prompts"]["prompt_template"]
    if name in ("fig1_attention_maps", "fig3d_maps_without_sinks"):
        assert {e["scene"] for e in data["examples"]} <= {f"photo_{i}.{'png' if i % 2 else 'jpg'}" for i in range(4)}


def _pope_file(tmp: Path) -> tuple[Path, Path]:
    images = _user_images(tmp / "val2014")
    names = sorted(p.name for p in images.iterdir())
    lines = [{"question_id": k, "image": names[k % 4], "text": f"Is there a {'circle' if k % 2 else 'dog'} in the image?",
              "label": "yes" if k % 2 else "no"} for k in range(6)]  # fmt: skip
    data = tmp / "pope.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data, images


@pytest.mark.parametrize("name", ["fig3b_sink_ablation", "table_var"])
def test_scored_study_on_a_pope_file_with_paired_statistics(name, tmp_path):
    data, images = _pope_file(tmp_path)
    done = run_study(name, tmp_path / "out", "--smoke", "--model", "tiny-llava", "--data", str(data), "--images",
                     str(images), "--n", "6", "--batch-size", "4", "--tau", "10")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert {row["split"] for row in result["rows"]} == {"file-pope"} and all(row["n"] == 6 for row in result["rows"])
    assert result["comparisons"]
    for comparison in result["comparisons"]:
        low, high = comparison["ci95"]
        assert low <= comparison["difference"] <= high and 0 < comparison["mcnemar_p"] <= 1
        assert comparison["n"] == 6
    # a bad file is refused before the model loads, naming the line
    data.write_text(data.read_text() + "not json\n")
    done = run_study(name, tmp_path / "bad", "--smoke", "--model", "tiny-llava", "--data", str(data), "--images", str(images))
    assert done.returncode != 0 and f"{data}:7: not a JSON line" in done.stderr


def test_study_refuses_an_object_template_on_user_images(tmp_path):
    images = _user_images(tmp_path / "photos")
    done = run_study("fig1_attention_maps", tmp_path, "--images", str(images), "--question", "Is there a {object}?")
    assert done.returncode != 0 and "only synthetic scenes know" in done.stderr


def test_tau_visual_reads_the_registry(tmp_path):
    from sinklens.models.sink_dims import known_sink_dims

    entry = known_sink_dims("toy-llava")
    assert entry.visual_tau == 16.0 and "layers 23-24" in entry.visual_tau_reason
    done = run_study("fig1_attention_maps", tmp_path, "--model", "tiny-llava", "--tau", "visual")
    assert done.returncode != 0 and "tiny-llava has no registered visual-sink threshold" in done.stderr


def _close(a, b, where: str = "", *, rel: float = 0.0, near_zero: float = 1e-4) -> None:
    """JSON values equal, floats within `rel` relative or `near_zero` absolute (default 1e-4: the studies
    round; two routes may round a last digit apart)."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=near_zero), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{where}: keys"
        for key in a:
            _close(a[key], b[key], f"{where}.{key}", rel=rel, near_zero=near_zero)
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: length"
        for index, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{index}]", rel=rel, near_zero=near_zero)
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


# tiny-llava-next: its grid follows each image's size, so photos of different sizes make prompts of different
# lengths, padded on the left in a batch (on tiny-llava every study prompt has the same length: nothing to pad)
BATCHED_MODEL = "tiny-llava-next"


def _photos_with_few_sinks(folder: Path, k: int = 3) -> Path:
    """k photos of different sizes, blue with one white box: tiny models' planted visual sinks are white patches,
    so a few image tokens are sinks (about 20 of 130) and a random draw among the others is a real draw."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(k):
        image = Image.new("RGB", (200 + 40 * index, 150 + 20 * index), (90, 120, 160))
        ImageDraw.Draw(image).rectangle((10, 10, 10 + 40 * (index + 1), 60), fill=(255, 255, 255))
        image.save(folder / f"photo_{index}.png")
    return folder


@pytest.mark.parametrize("name", list(STUDIES))
def test_study_in_batches_gives_the_numbers_of_one_prompt_at_a_time(name, tmp_path):
    """--batch-size 2 over 3 prompts (a padded batch, then a partial one) writes the numbers of --batch-size 1."""
    if name in ("fig3b_sink_ablation", "table_var"):
        data, images = _pope_file(tmp_path)
        source = ("--data", str(data), "--images", str(images))
    else:
        source = ("--images", str(_photos_with_few_sinks(tmp_path / "photos")))
    results = {}
    # the vision study maps patches to image tokens one to one: LLaVA-1.5's layout, with a tower that has high norms
    model = ("tiny-llava", "--plant-vision-sinks") if name == "vision_to_language_sinks" else (BATCHED_MODEL,)
    for size in (1, 2):
        done = run_study(name, tmp_path / f"batch{size}", "--smoke", "--model", *model, *source, "--n", "3",
                         "--batch-size", str(size))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results[size] = json.loads((tmp_path / f"batch{size}" / f"{name}.json").read_text())
        assert results[size].pop("batch_size") == size and results[size]["n"] == 3
        results[size].pop("seconds")
    _close(results[1], results[2], rel=1e-4, near_zero=1e-6)  # the studies round to 6 digits


def test_study_refuses_a_bad_batch_size_before_the_model_loads(tmp_path):
    for name in ("fig1_attention_maps", "table_var"):
        done = run_study(name, tmp_path / name, "--batch-size", "0")
        assert done.returncode != 0
        assert "--batch-size must be an integer >= 1, got 0" in done.stderr
        assert not (tmp_path / name).exists(), "the study started (Study.start makes --out) before refusing"


def test_batches_are_padded_on_the_left_with_each_prompt_on_its_own_positions(tmp_path):
    """Study.batches: prompts of different lengths in one batch; e.own(tensor) is the prompt's own tokens."""
    import sinklens
    from sinklens.eval.study import Study
    from sinklens.eval.study_settings import parse_args

    images = _photos_with_few_sinks(tmp_path / "photos")
    argv = ["--out", str(tmp_path / "out"), "--images", str(images), "--n", "3", "--batch-size", "2"]
    settings = parse_args("fig1_attention_maps", "", n=3, smoke_n=3, argv=argv)
    lm = sinklens.load(BATCHED_MODEL)
    study = Study(settings=settings, loaded=lm, runner=sinklens.NnsightRunner(lm))
    batches = list(study.batches())
    assert [[e.index for e in examples] for examples, _ in batches] == [[0, 1], [2]]
    assert [[e.row for e in examples] for examples, _ in batches] == [[0, 1], [0]]
    assert len({e.length for e in batches[0][0]}) == 2, "the first two prompts must differ in length: a padded batch"
    for examples, inputs in batches:
        for e in examples:
            alone = lm.prepare(e.source.image(), e.question)["input_ids"][0]
            assert e.length == alone.shape[0] and e.own(inputs["input_ids"]).tolist() == alone.tolist()


def test_vision_to_language_sinks_on_a_tower_with_planted_high_norm_patches(tmp_path):
    """tiny-llava with high-norm patches planted on bright patches (which its language model turns into visual
    sinks): the high-norm patches are sinks far above the random-patch control; toy-llava's tower has none."""
    from sinklens.builtin.tiny_llava import draw_scene

    images = tmp_path / "scenes"
    images.mkdir()
    for index in range(6):
        draw_scene(white_patches=(index, 20 + index)).save(images / f"scene_{index}.png")
    done = run_study("vision_to_language_sinks", tmp_path / "out", "--model", "tiny-llava", "--plant-vision-sinks",
                     "--images", str(images), "--n", "6")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "vision_to_language_sinks.json").read_text())
    layer = data["per_layer"][2]
    assert layer["prompts"] == 6 and layer["observed"] == 1.0 and layer["random_control"] < 0.1
    assert layer["difference_ci95"][0] > 0.5
    assert data["dimensions"]["high_norm_and_sink"]["dims"][0] == 7  # the planted sink dimension, as BOS's
    toy = run_study("vision_to_language_sinks", tmp_path / "toy", "--smoke")
    assert toy.returncode == 0, toy.stderr[-3000:]
    assert "no high-norm token" in json.loads((tmp_path / "toy" / "vision_to_language_sinks.json").read_text())["finding"]
