"""`sinklens run` and `sinklens draw-scene` end to end, in-process."""

from __future__ import annotations

import json

import pytest

from sinklens.cli import main


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    assert main(["draw-scene", "--tiny", "--out", str(path)]) == 0
    return path


def test_run_writes_the_result(scene_path, tmp_path, capsys):
    code = main(["run", "--model", "tiny-llava", "--image", str(scene_path), "--prompt", "What is in the image?",
                 "--var", "--max-new-tokens", "6", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "result.json").read_text())
    for key in ("model", "sink_dims", "sinks", "n_image_centric", "answer_base", "answer_var", "seconds"):
        assert key in result
    assert result["model"] == "tiny-llava" and result["sink_dims"] == [7]
    assert result["sinks"]["2"] == {"visual": [9, 23], "text": [0]}
    assert set(result["n_image_centric"]["per_layer"]) == {"2", "3", "4"}
    assert result["n_image_centric"]["total"] > 0
    assert result["answer_base"] != result["answer_var"]
    assert "result written to" in capsys.readouterr().out


def test_run_without_var_answers_once(scene_path, tmp_path):
    assert main(["run", "--model", "tiny-llava", "--image", str(scene_path), "--prompt", "what colour ?", "--no-var",
                 "--max-new-tokens", "3", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["answer_var"] is None and result["n_image_centric"] is None


def test_released_convention_and_explicit_dims(scene_path, tmp_path):
    assert main(["run", "--model", "tiny-llava", "--image", str(scene_path), "--prompt", "what is there ?", "--convention", "released",
                 "--sink-dims", "7", "--tau", "15", "--max-new-tokens", "3", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["n_image_centric"]["per_layer"]) == {"2", "3", "4", "5"}  # the released code edits the last layer


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--p", "1.5"], "p must be in [0, 1]"),
        (["--tau", "0"], "tau must be > 0"),
        (["--image", "no/such.png"], "draw-scene"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(scene_path, tmp_path, capsys, extra, message):
    args = ["run", "--model", "tiny-llava", "--image", str(scene_path), "--prompt", "what ?", "--out", str(tmp_path)] + extra
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_bad_sink_dims_are_an_argparse_error(scene_path, tmp_path):
    with pytest.raises(SystemExit):
        main(["run", "--model", "tiny-llava", "--image", str(scene_path), "--prompt", "x", "--sink-dims", "a,b",
              "--out", str(tmp_path)])
