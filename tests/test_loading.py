"""Checkpoints on disk go through the same loading code as hub ids; processors without torchvision; device maps."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from sinklens import VAR, FindSinks, load
from sinklens.backends.nnsight_backend import NnsightRunner
from sinklens.errors import MissingDependencyError, ParameterError, SinkDimensionError
from sinklens.builtin import BUILTINS, demo_scene
from sinklens.builtin.tiny_llava import TINY_SINK_DIM, build_tiny_llava

from conftest import NEW_ARCHS, demo_inputs, loaded


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava-checkpoint")
    model, processor = build_tiny_llava()
    model.config._attn_implementation = "sdpa"  # what a hub checkpoint would default to
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_local_checkpoint_loads_eager_and_matches_the_builtin(checkpoint, tiny, inputs):
    lm = load(str(checkpoint))
    assert lm.text_config._attn_implementation == "eager"
    assert lm.name == str(checkpoint) and lm.sink_dims is None
    with torch.no_grad():
        torch.testing.assert_close(lm.model(**inputs).logits, tiny.model(**inputs).logits, rtol=0, atol=0)


def test_unknown_checkpoint_needs_sink_dims_then_runs_with_them(checkpoint, inputs):
    lm = load(str(checkpoint))
    runner = NnsightRunner(lm)
    with pytest.raises(SinkDimensionError, match="discover-sink-dims"):
        runner.forward(inputs, [FindSinks(), VAR()])
    result = runner.forward(inputs, [FindSinks(dims=(TINY_SINK_DIM,)), VAR()])
    assert result.ctx.sinks[2][0].nonzero().flatten().tolist() == [0, 9, 23]


# --- every architecture from disk, processors without torchvision, device maps ---------------------------

STACK = [FindSinks(dims=(TINY_SINK_DIM,)), VAR()]


def save_builtin(name, path, *, processor_class=None):
    """Save a built-in as a checkpoint; `processor_class` renames the processor as a hub checkpoint would."""
    model, processor = BUILTINS[name]()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if processor_class is not None:
        for file in ("processor_config.json", "tokenizer_config.json"):
            config = json.loads((path / file).read_text())
            config["processor_class"] = processor_class
            (path / file).write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("name", NEW_ARCHS)
def test_local_checkpoints_of_every_architecture_load_and_match_the_builtin(name, tmp_path):
    lm = load(str(save_builtin(name, tmp_path)))
    assert lm.text_config._attn_implementation == "eager" and lm.sink_dims is None
    inputs = lm.prepare(demo_scene(name), "what is in the image ?")
    torch.testing.assert_close(inputs["input_ids"], demo_inputs(name)["input_ids"], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(**inputs).logits, loaded(name).model(**inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "processor_class"), [("tiny-qwen2-vl", "Qwen2VLProcessor"),
                                                       ("tiny-internvl", "InternVLProcessor")])
def test_a_hub_style_processor_loads_without_its_video_processor(name, processor_class, tmp_path):
    lm = load(str(save_builtin(name, tmp_path, processor_class=processor_class)))
    assert type(lm.processor).__name__ in (processor_class, f"ImageOnly{processor_class}")
    inputs = lm.prepare(demo_scene(name), "what is in the image ?")
    torch.testing.assert_close(inputs["input_ids"], demo_inputs(name)["input_ids"], rtol=0, atol=0)


def test_a_checkpoint_split_over_cpu_and_disk_runs_var_as_on_one_device(tmp_path):
    """device_map through accelerate: layers 3-5 live on disk and load on the fly, under nnsight."""
    name = "tiny-qwen2-vl"
    device_map = {"model.visual": "cpu", "model.language_model.embed_tokens": "cpu", "model.language_model.norm": "cpu",
                  "model.language_model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.language_model.layers.{layer}": "cpu" if layer < 3 else "disk" for layer in range(6)}
    lm = load(str(save_builtin(name, tmp_path / "checkpoint")), device_map=device_map,
              hf_kwargs={"offload_folder": str(tmp_path / "offload")})
    assert lm.model.model.language_model.layers[4].self_attn.q_proj.weight.device.type == "meta"
    inputs = demo_inputs(name)
    split, whole = NnsightRunner(lm), NnsightRunner(loaded(name))
    assert max_abs(split.forward(inputs, STACK).logits, whole.forward(inputs, STACK).logits) <= 1e-5
    assert max_abs(split.generate(inputs, STACK, max_new_tokens=4).step_logits,
                   whole.generate(inputs, STACK, max_new_tokens=4).step_logits) <= 1e-5


def test_a_builtin_loads_with_a_device_map():
    lm = load("tiny-llava-next", device_map="auto")
    inputs = demo_inputs("tiny-llava-next")
    torch.testing.assert_close(NnsightRunner(lm).forward(inputs, STACK).logits,
                               NnsightRunner(loaded("tiny-llava-next")).forward(inputs, STACK).logits, rtol=0, atol=0)


def test_device_and_device_map_together_are_refused():
    with pytest.raises(ParameterError, match="not both"):
        load("tiny-llava", device="cpu", device_map="auto")


def test_a_device_map_without_accelerate_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # what `import accelerate` sees when it is missing
    with pytest.raises(MissingDependencyError, match="pip install accelerate"):
        load("tiny-llava", device_map="auto")


def max_abs(a, b):
    return (a - b).abs().max().item()
