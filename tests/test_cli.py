"""`sinklens run` and `sinklens draw-scene` end to end, in-process."""

from __future__ import annotations

import json

import pytest

from sinklens.cli import main


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    assert main(["draw-scene", "--model", "tiny-llava", "--out", str(path)]) == 0
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


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl",
                                  "tiny-llava-onevision", "tiny-qwen3-vl", "tiny-gemma3", "tiny-smolvlm",
                                  "tiny-mistral3"])  # fmt: skip
def test_run_on_every_architecture(name, tmp_path):
    scene = tmp_path / "scene.png"
    assert main(["draw-scene", "--model", name, "--out", str(scene)]) == 0
    assert main(["run", "--model", name, "--image", str(scene), "--prompt", "What is in the image?", "--var",
                 "--max-new-tokens", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["model"] == name and result["sink_dims"] == [7]
    assert result["sinks"]["2"]["text"] == [0] and len(result["sinks"]["2"]["visual"]) >= 2
    assert result["n_image_centric"]["total"] > 0
    (grid,) = result["image_grids"]
    assert result["n_image_tokens"] == sum(rows * cols for rows, cols in grid["tiles"].values())


def test_several_images_in_one_prompt(tmp_path):
    scene = tmp_path / "scene.png"
    assert main(["draw-scene", "--model", "tiny-qwen2-vl", "--out", str(scene)]) == 0
    assert main(["run", "--model", "tiny-qwen2-vl", "--image", str(scene), "--image", str(scene), "--prompt",
                 "what is in the two images ?", "--max-new-tokens", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    first, second = result["image_grids"]
    assert first["tiles"] == second["tiles"] == {"image": [4, 4]} and first["span"][1] < second["span"][0]
    assert len(result["sinks"]["2"]["visual"]) == 4  # two white blocks in each image


def test_an_unsupported_architecture_exits_2_naming_the_supported_ones(tmp_path, capsys, scene_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "llama")
    assert main(["run", "--model", str(tmp_path / "llama"), "--image", str(scene_path), "--prompt", "x",
                 "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "LlamaForCausalLM" in error and "Qwen2VLForConditionalGeneration" in error and "Adding an architecture" in error


def test_a_checkpoint_without_known_sink_dims_exits_2_saying_how_to_find_them(tmp_path, capsys, scene_path):
    from sinklens.builtin.tiny_next import build_tiny_llava_next

    model, processor = build_tiny_llava_next()
    model.save_pretrained(tmp_path / "next")
    processor.save_pretrained(tmp_path / "next")
    assert main(["run", "--model", str(tmp_path / "next"), "--image", str(scene_path), "--prompt", "x",
                 "--max-new-tokens", "2", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "no sink dimensions are known" in error and "discover-sink-dims" in error and "--sink-dims" in error


@pytest.fixture(scope="module")
def black_path(tmp_path_factory):
    """A black 16-bit grayscale PNG: tiny-llava's planted visual sinks need white blocks, so it has none."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("black") / "black16.png"
    Image.fromarray(np.zeros((84, 84), dtype=np.uint16)).save(path)
    return path


def test_run_counts_sinks_per_layer_and_warns_when_var_acts_without_visual_sinks(black_path, tmp_path, capsys):
    assert main(["run", "--model", "tiny-llava", "--image", str(black_path), "--prompt", "What is in the image?",
                 "--max-new-tokens", "3", "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sink_counts"]["2"] == {"visual": 0, "text": len(result["sinks"]["2"]["text"])}
    assert all(count["visual"] == 0 for count in result["sink_counts"].values())
    assert any(count["text"] for count in result["sink_counts"].values())
    assert "visual sinks in none of 6 layers" in result["sink_summary"]
    (warning,) = result["warnings"]
    assert "moves onto the image tokens" in warning
    assert "16-bit grayscale (mode I;16) scaled" in result["image_notes"][0]
    captured = capsys.readouterr()
    assert "visual sinks in none of 6 layers" in captured.out
    assert "sinklens: warning: no image token is a visual sink" in captured.err
    assert "sinklens: note: --image" in captured.err


def test_released_var_without_visual_sinks_changes_nothing_and_says_so(black_path, tmp_path):
    assert main(["run", "--model", "tiny-llava", "--image", str(black_path), "--prompt", "What is in the image?",
                 "--convention", "released", "--max-new-tokens", "3", "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["answer_var"] == result["answer_base"]
    (warning,) = result["warnings"]
    assert "changed nothing" in warning


def test_run_with_visual_sinks_warns_nothing(scene_path, tmp_path):
    assert main(["run", "--model", "tiny-llava", "--image", str(scene_path), "--prompt", "what ?",
                 "--max-new-tokens", "2", "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["warnings"] == [] and result["sink_counts"]["2"] == {"visual": 2, "text": 1}


def test_rows_route_cannot_go_to_ndif(scene_path, tmp_path, capsys):
    args = ["run", "--model", "tiny-llava", "--image", str(scene_path), "--prompt", "what ?", "--out", str(tmp_path),
            "--attention", "rows", "--remote", "ndif"]
    assert main(args) == 2
    assert "--attention rows needs sinklens' attention function next to the model" in capsys.readouterr().err


def test_run_on_the_rows_route_gives_the_eager_answers(scene_path, tmp_path):
    results = {}
    for route in ("eager", "rows"):
        args = ["run", "--model", "tiny-llava", "--image", str(scene_path), "--prompt", "What is in the image?",
                "--max-new-tokens", "6", "--attention", route, "--out", str(tmp_path / route)]
        assert main(args) == 0
        results[route] = json.loads((tmp_path / route / "result.json").read_text())
    eager, rows = results["eager"], results["rows"]
    assert (eager["attention"], rows["attention"]) == ("eager", "rows")
    for key in ("sinks", "n_image_centric", "answer_base", "answer_var"):
        assert eager[key] == rows[key], key
