"""Bad input fails early with a message that says what to do."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
from pathlib import Path

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


# --- every raise site a user can reach raises a sinklens error ---------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src" / "sinklens"
# genuine protocol raises, each with its reason: file, function, exception
ALLOWED = {
    # a module's __getattr__ must raise AttributeError (Python's protocol: hasattr, getattr with a default)
    ("__init__.py", "__getattr__", "AttributeError"),
    ("builtin/__init__.py", "__getattr__", "AttributeError"),
    # an argparse `type=` function reports a bad value with ArgumentTypeError: argparse prints it as a usage error
    ("cli/common.py", "sink_dims", "ArgumentTypeError"),
    ("eval/study_settings.py", "_tau", "ArgumentTypeError"),
}


def raise_sites() -> list[tuple[str, int, str, str]]:
    """(file, line, function, exception class name) of every `raise Class(...)` in src/sinklens, resolved in its module."""
    import builtins
    import importlib

    sites = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative == "__main__.py" or relative.startswith("integrations/lmms_eval/model.py") and importlib.util.find_spec("lmms_eval") is None:
            continue
        module = importlib.import_module("sinklens." + relative[:-3].replace("/", ".").removesuffix(".__init__"))
        tree = ast.parse(path.read_text())
        for function in [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(function):
                if not isinstance(node, ast.Raise) or node.exc is None:
                    continue
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = ast.unparse(target)
                value = vars(module).get(name.split(".")[0], getattr(builtins, name.split(".")[0], None))
                for part in name.split(".")[1:]:
                    value = getattr(value, part, None)
                if isinstance(value, type):  # a class raised (a caught exception re-raised by name is not one)
                    sites.append((relative, node.lineno, function.name, value))
    return sites


def test_every_error_a_user_can_reach_is_a_sinklens_error():
    wrong = [f"src/sinklens/{file}:{line} ({function}) raises {cls.__name__}"
             for file, line, function, cls in raise_sites()
             if not issubclass(cls, SinklensError) and (file, function, cls.__name__) not in ALLOWED]  # fmt: skip
    assert not wrong, "raise a sinklens error (errors.py) that says what to do:\n" + "\n".join(wrong)


def test_the_raise_site_reader_finds_sites():
    sites = raise_sites()
    assert len(sites) > 100 and any(cls is ParameterError for *_, cls in sites)
