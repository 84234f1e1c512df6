"""Every hook path in hooks/ resolves on the installed transformers and means what its name says."""

from __future__ import annotations

import einops
import pytest
import torch

from sinklens import Hook
from sinklens.backends.nnsight_backend import locate, make_context, run_located
from sinklens.errors import CatalogueError, UnknownArchitectureError
from sinklens.hook_points import LAYER_POINTS, block, parse
from sinklens.run import plan
from sinklens.models.catalogue import HookCatalogue, catalogue_dir, catalogue_for, supported_architectures

from conftest import ARCHS, demo_inputs, loaded, runner_for
from oracle_var import language_model

LAYER = 2
ARCH_NAMES = list(ARCHS)


class Capture:
    """An intervention that only reads: keeps a clone of each hook point it names."""

    def __init__(self, names):
        self.names, self.seen = names, {}

    def hooks(self, ctx):
        return [Hook(name, lambda tensor, ctx, name=name: self.seen.__setitem__(name, tensor.clone())) for name in self.names]


class Replace:
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def hooks(self, ctx):
        return [Hook(self.name, lambda tensor, ctx: self.fn(tensor))]


def run(runner, tiny, inputs, stack):
    ctx = make_context(tiny, inputs)
    model = runner.model
    with torch.no_grad(), model.trace(**inputs):
        run_located(model, locate(tiny.catalogue, plan(stack, ctx)), ctx)
        logits = model.output.logits.save()
    return logits


def decoder_layers(lm):
    """The language model's decoder layers, found without the catalogue."""
    return language_model(lm.model).layers


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_every_point_reads_what_its_name_says(name):
    runner, tiny, inputs = runner_for(name), loaded(name), demo_inputs(name)
    names = [block(LAYER, point) for point in LAYER_POINTS] + ["hook_logits"]
    capture = Capture(names)
    logits = run(runner, tiny, inputs, [capture])
    seen = {parse(name).kind: tensor for name, tensor in capture.seen.items()}
    with torch.no_grad():
        reference = tiny.model(**inputs, output_hidden_states=True)
    layer = decoder_layers(tiny)[LAYER]
    attention = layer.self_attn
    n_heads = tiny.text_config.num_attention_heads

    torch.testing.assert_close(seen["hook_resid_pre"], reference.hidden_states[LAYER], rtol=0, atol=0)
    torch.testing.assert_close(seen["hook_resid_post"], reference.hidden_states[LAYER + 1], rtol=0, atol=0)
    pattern = seen["attn.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    torch.testing.assert_close(pattern, seen["attn.hook_attn_scores"].softmax(-1))
    value = einops.repeat(seen["attn.hook_v"], "b kv pos d -> b (kv g) pos d", g=n_heads // seen["attn.hook_v"].shape[1])
    z = einops.rearrange(pattern @ value, "b head pos d -> b pos (head d)")
    torch.testing.assert_close(seen["attn.hook_z"], z)
    attn_out = attention.o_proj(seen["attn.hook_z"])
    if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma 3 normalises the attention's output before adding it
        attn_out = layer.post_attention_layernorm(attn_out)
    torch.testing.assert_close(seen["hook_attn_out"], attn_out)
    torch.testing.assert_close(seen["hook_resid_mid"], seen["hook_resid_pre"] + seen["hook_attn_out"])
    torch.testing.assert_close(seen["hook_logits"], reference.logits, rtol=0, atol=0)
    torch.testing.assert_close(logits, reference.logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ARCH_NAMES)
@pytest.mark.parametrize("point", LAYER_POINTS)
def test_every_point_can_be_written(name, point):
    runner, tiny, inputs = runner_for(name), loaded(name), demo_inputs(name)
    plain = run(runner, tiny, inputs, [])
    edits = {
        "attn.hook_attn_scores": lambda t: torch.zeros_like(t).masked_fill(t < torch.finfo(t.dtype).min / 2, float("-inf")),
        "attn.hook_pattern": lambda t: torch.tril(torch.ones_like(t)) / torch.tril(torch.ones_like(t)).sum(-1, keepdim=True),
    }
    edited = run(runner, tiny, inputs, [Replace(block(LAYER, point), edits.get(point, lambda t: t * 0.5))])
    assert not torch.allclose(plain, edited), f"writing {point} did not change the logits"


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_point_order_is_execution_order(name):
    runner, tiny, inputs = runner_for(name), loaded(name), demo_inputs(name)
    # reading every point of two layers in catalogue order raises nothing in nnsight,
    # which refuses reads the model has already run past
    capture = Capture([block(layer, point) for layer in (1, 2) for point in reversed(LAYER_POINTS)])
    run(runner, tiny, inputs, [capture])
    assert len(capture.seen) == 2 * len(LAYER_POINTS)


def test_catalogue_is_found_and_lists_llava():
    assert (catalogue_dir() / "llava.toml").is_file()
    assert "LlavaForConditionalGeneration" in supported_architectures()
    assert catalogue_for("LlavaForConditionalGeneration").family == "llava"


def test_every_catalogue_file_is_exercised_by_a_tiny_built_in():
    """Each architecture of every hooks/*.toml has a tiny built-in that the behaviour tests above run."""
    built = {type(loaded(name).model).__name__ for name in ARCHS}
    assert set(supported_architectures()) == built
    files = {path.stem for path in catalogue_dir().glob("*.toml")}
    assert files == {"llava", "llava_next", "qwen2_vl", "internvl",
                     "llava_onevision", "qwen3_vl", "gemma3", "smolvlm", "mistral3"}  # fmt: skip
    assert {loaded(name).catalogue.source.stem for name in ARCHS} == files


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(UnknownArchitectureError, match="LlavaForConditionalGeneration") as error:
        catalogue_for("MadeUpForConditionalGeneration")
    assert "hooks/" in str(error.value)


def test_malformed_catalogue_files_fail_naming_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('architectures = ["X"]\nfamily = "x"\n')
    with pytest.raises(CatalogueError, match="broken.toml lacks"):
        HookCatalogue.from_file(path)
    good = (catalogue_dir() / "llava.toml").read_text()
    path.write_text(good.replace('"hook_resid_pre" = ', '"hook_resid_prex" = '))
    with pytest.raises(CatalogueError, match="unknown keys \\['hook_resid_prex'\\]"):
        HookCatalogue.from_file(path)


def test_a_path_that_does_not_resolve_says_which_hook_and_file(runner, tiny, inputs):
    broken = HookCatalogue(**{**tiny.catalogue.__dict__, "nnsight": {**tiny.catalogue.nnsight, "hook_resid_pre": "model.language_model.floors.{layer}.input"}})
    ctx = make_context(tiny, inputs)
    with pytest.raises(CatalogueError, match="hook_resid_pre.*floors"):
        with torch.no_grad(), runner.model.trace(**inputs):
            run_located(runner.model, locate(broken, plan([Capture([block(0, "hook_resid_pre")])], ctx)), ctx)
