"""Bad input fails early with a message that says what to do."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sinklens import VAR, FindSinks, from_hf
from sinklens.backends.nnsight_backend import make_context
from sinklens.errors import (
    AttentionImplementationError,
    HookNameError,
    ImageSpanError,
    ParameterError,
    SinkDimensionError,
    SinklensError,
    UnknownArchitectureError,
)
from sinklens.hook_points import parse
from sinklens.builtin.tiny_llava import build_tiny_llava


def test_prompt_without_image_tokens(tiny):
    ids = tiny.tokenizer("what is in the picture ?", return_tensors="pt")
    inputs = {**ids, "pixel_values": torch.zeros(1, 3, 84, 84)}
    with pytest.raises(ImageSpanError, match="no image token .*prepare"):
        make_context(tiny, inputs)


def test_image_token_count_must_match_the_image(tiny, inputs):
    ids = inputs["input_ids"]
    first = int((ids[0] == tiny.image_token_id).nonzero()[0])
    short = {**inputs, "input_ids": torch.cat([ids[:, :first], ids[:, first + 1 :]], dim=1)}
    short["attention_mask"] = torch.ones_like(short["input_ids"])
    with pytest.raises(ImageSpanError, match="found 35 image tokens .* give 36 features"):
        make_context(tiny, short)


def test_image_tokens_without_pixels(tiny, inputs):
    with pytest.raises(ImageSpanError, match="no pixel_values"):
        make_context(tiny, {key: value for key, value in inputs.items() if key != "pixel_values"})


@pytest.mark.parametrize("implementation", ["sdpa", "flash_attention_2"])
def test_attention_without_a_pattern_is_refused(implementation):
    model, processor = build_tiny_llava()
    model.config.text_config._attn_implementation = implementation
    with pytest.raises(AttentionImplementationError, match="attn_implementation='eager'"):
        from_hf(model, processor)


def test_unknown_architecture_is_refused_naming_the_supported_ones():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2))
    with pytest.raises(UnknownArchitectureError, match="LlamaForCausalLM.*Supported: ") as error:
        from_hf(model, None)
    for architecture in ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                         "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                         "InternVLForConditionalGeneration"):
        assert architecture in str(error.value)
    assert "hooks/<family>.toml" in str(error.value) and "Adding an architecture" in str(error.value)


@pytest.mark.parametrize("name", ["p", "rho", "summ"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_var_parameters_outside_the_unit_interval(name, value):
    with pytest.raises(ParameterError, match=f"{name} must be in \\[0, 1\\], got {value}"):
        VAR(**{name: value})


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_tau_must_be_positive(tau):
    with pytest.raises(ParameterError, match="tau must be > 0"):
        FindSinks(tau=tau)


def test_empty_sink_dimension_set():
    with pytest.raises(SinkDimensionError, match="dims is empty"):
        FindSinks(dims=())


def test_model_without_known_sink_dimensions_says_how_to_find_them(tiny, inputs):
    ctx = make_context(tiny, inputs)
    ctx = dataclasses.replace(ctx, spec=dataclasses.replace(ctx.spec, sink_dims=None))
    with pytest.raises(SinkDimensionError, match="discover-sink-dims"):
        FindSinks().hooks(ctx)


def test_unknown_convention():
    with pytest.raises(ParameterError, match="'paper'.*'released'"):
        VAR(convention="authors")


def test_var_without_findsinks_says_to_add_it(runner, inputs):
    with pytest.raises(RuntimeError, match="put FindSinks"):
        runner.forward(inputs, [VAR()])


def test_layers_outside_the_model(tiny, inputs):
    ctx = make_context(tiny, inputs)
    with pytest.raises(ValueError, match="layers 0..5"):
        VAR(layers=[7]).hooks(ctx)


def test_unknown_hook_name_lists_the_valid_points():
    with pytest.raises(HookNameError, match="hook_resid_pre"):
        parse("blocks.0.attn.hook_patern")


def test_every_error_is_a_sinklens_error_and_a_builtin():
    assert issubclass(ImageSpanError, SinklensError) and issubclass(ImageSpanError, ValueError)
    assert issubclass(UnknownArchitectureError, KeyError)
