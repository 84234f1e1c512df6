"""The TransformerLens backend equals the nnsight backend, intervention by intervention.

Each stack runs through nnsight (HF generate, min_new_tokens) and through a
TransformerBridge (run_with_hooks, run_with_cache, bridge.generate with the KV
cache); logits must agree within 1e-5 in prefill and at each of 8 greedy steps,
on every model in conftest.EQUIVALENCE_MODELS.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sinklens import PAI, VAR, VCD, Edit, FindSinks, LogitsHook, OnPass, Stack
from sinklens.run import make_context
from sinklens.backends.transformer_lens_backend import build_bridge, transformer_lens_hooks
from sinklens.errors import CatalogueError
from sinklens.hook_points import LAYER_POINTS, block

from conftest import assert_logits_close, max_diff

STEPS = 8
# on every model: both backends unembed the same shapes (every position in a forward pass, the last
# one in generate's prefill), and toy-llava's logits (up to ~37) would move by 3e-5 with the shape alone
TOLERANCE = 1e-5
LAYER = 2


def scale_resid(resid, ctx):
    return resid * 1.25


def damp_first_key(pattern, ctx):
    pattern[..., 0] *= 0.5
    return pattern


def ban_top_token(logits, ctx):
    """A decoding method in one line: never pick the token the model likes best."""
    return logits.scatter(-1, logits.argmax(-1, keepdim=True), float("-inf"))


STACKS = {
    "none": lambda: [],
    "find-sinks": lambda: [FindSinks()],
    "var-paper": lambda: [FindSinks(), VAR()],
    "var-released": lambda: [FindSinks(convention="released"), VAR(convention="released", p=0.9, rho=0.5)],
    "pai": lambda: [PAI(alpha=0.5)],
    "user-edit": lambda: [("blocks.3.hook_resid_post", scale_resid)],
    "logits-hook": lambda: [LogitsHook(ban_top_token)],
    "vcd": lambda: [VCD()],
    "vcd+var-both-passes": lambda: [FindSinks(), VAR(), VCD()],
    "vcd+var-image-pass": lambda: [FindSinks(), OnPass("image", VAR()), VCD()],
    "stack": lambda: Stack(FindSinks(), PAI(), VAR(), ("blocks.3.attn.hook_pattern", damp_first_key)),
}


@pytest.mark.parametrize("stack_name", list(STACKS))
def test_backends_agree_in_prefill_and_over_greedy_steps(model_case, stack_name):
    loaded, inputs, nnsight_runner, tl_runner = model_case
    make = STACKS[stack_name]
    nn_forward, tl_forward = nnsight_runner.forward(inputs, make()), tl_runner.forward(inputs, make())
    assert_logits_close(nn_forward.logits, tl_forward.logits, TOLERANCE, "prefill logits")
    for layer, sinks in nn_forward.ctx.sinks.items():
        assert torch.equal(sinks, tl_forward.ctx.sinks[layer]), f"sinks at layer {layer}"

    nn_generation = nnsight_runner.generate(inputs, make(), max_new_tokens=STEPS)
    tl_generation = tl_runner.generate(inputs, make(), max_new_tokens=STEPS)
    assert nn_generation.step_logits.shape[1] == STEPS
    for step in range(STEPS):
        assert_logits_close(
            nn_generation.step_logits[:, step], tl_generation.step_logits[:, step], TOLERANCE, f"decoding step {step}"
        )
    assert nn_generation.tokens == tl_generation.tokens
    assert nn_generation.ctx.records.get("var") == tl_generation.ctx.records.get("var")


def capture(runner_, inputs, names, stack=()):
    seen = {}
    members = [*stack]
    for name in names:
        members.append(Edit(name, lambda tensor, ctx, name=name: seen.__setitem__(name, tensor.clone()), writes=False))
    runner_.forward(inputs, members)
    return seen


def test_every_hook_point_holds_the_same_tensor_in_both_backends(runner, tl_runner, inputs):
    names = [block(LAYER, point) for point in LAYER_POINTS] + ["hook_logits"]
    nn_seen, tl_seen = capture(runner, inputs, names), capture(tl_runner, inputs, names)
    for name in names:
        assert nn_seen[name].shape == tl_seen[name].shape, name
        assert max_diff(nn_seen[name], tl_seen[name]) <= 1e-6, name


def shift(tensor, ctx):
    # not a rescaling: at hook_resid_mid both backends hold the input of the MLP's RMSNorm, which a
    # rescaling would not change (and a write there reaches the MLP branch only, not the residual)
    return tensor + 0.05 * torch.arange(tensor.shape[-1], dtype=tensor.dtype) / tensor.shape[-1]


def test_an_edit_at_every_point_changes_the_logits_the_same_way(runner, tl_runner, inputs):
    for point in LAYER_POINTS:
        stack = [(block(LAYER, point), shift)]
        nn_logits, tl_logits = runner.forward(inputs, stack).logits, tl_runner.forward(inputs, stack).logits
        assert max_diff(nn_logits, runner.forward(inputs).logits) > 1e-4, point
        assert max_diff(nn_logits, tl_logits) <= TOLERANCE, point


def test_while_decoding_hook_v_holds_only_the_new_token_under_transformer_lens(runner, tl_runner, inputs):
    shapes = {"nnsight": [], "transformer_lens": []}

    def runs(backend):
        return [Edit(block(LAYER, "attn.hook_v"), lambda v, ctx: shapes[backend].append(tuple(v.shape)), writes=False)]

    runner.generate(inputs, runs("nnsight"), max_new_tokens=2)
    tl_runner.generate(inputs, runs("transformer_lens"), max_new_tokens=2)
    n_prompt = inputs["input_ids"].shape[1]
    n_kv, d_head = shapes["nnsight"][0][1], shapes["nnsight"][0][3]
    assert shapes["nnsight"] == [(1, n_kv, n_prompt, d_head), (1, n_kv, n_prompt + 1, d_head)]
    assert shapes["transformer_lens"] == [(1, n_kv, n_prompt, d_head), (1, n_kv, 1, d_head)]


def test_while_generating_hook_logits_holds_the_last_position_only_in_both_backends(runner, tl_runner, inputs):
    # HF generate unembeds the last position alone (logits_to_keep=1); the bridge's prefill must too,
    # or the two GEMM shapes give logits 3e-5 apart on toy-llava
    shapes = {"nnsight": [], "transformer_lens": []}

    def runs(backend):
        return [Edit("hook_logits", lambda logits, ctx: shapes[backend].append(tuple(logits.shape)), writes=False)]

    runner.generate(inputs, runs("nnsight"), max_new_tokens=2)
    tl_runner.generate(inputs, runs("transformer_lens"), max_new_tokens=2)
    vocab = shapes["nnsight"][0][-1]
    assert shapes["nnsight"] == shapes["transformer_lens"] == [(1, 1, vocab), (1, 1, vocab)]


def test_run_with_cache_holds_what_the_stack_left(runner, tl_runner, inputs):
    names = [block(LAYER, "attn.hook_pattern"), block(LAYER, "attn.hook_z"), block(LAYER, "attn.hook_v"), "hook_logits"]
    stack = Stack(FindSinks(), PAI(), VAR())
    cached = tl_runner.run_with_cache(inputs, stack, names=names)
    after_stack = capture(runner, inputs, names, stack=[stack])  # listed after VAR: sees VAR's output
    for name in names:
        assert max_diff(cached.cache[name], after_stack[name]) <= TOLERANCE, name
    assert max_diff(cached.logits, runner.forward(inputs, stack).logits) <= TOLERANCE
    assert max_diff(cached.cache[names[0]], tl_runner.run_with_cache(inputs, names=names).cache[names[0]]) > 1e-3


def test_the_bridges_own_api_runs_a_stack(tiny, tl_runner, inputs):
    bridge = tl_runner.bridge
    ctx = make_context(tiny, inputs)
    stack = [FindSinks(), VAR()]
    fwd_hooks = transformer_lens_hooks(tiny, stack, ctx, bridge=bridge)
    with torch.no_grad():
        logits = bridge.run_with_hooks(
            inputs["input_ids"], fwd_hooks=fwd_hooks,
            pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"],
        )
    torch.testing.assert_close(logits, tl_runner.forward(inputs, stack).logits, rtol=0, atol=0)
    assert not any(point.fwd_hooks for point in bridge.hook_dict.values()), "hooks must not outlive the run"

    ctx = make_context(tiny, inputs)
    with torch.no_grad(), bridge.hooks(fwd_hooks=transformer_lens_hooks(tiny, stack, ctx, bridge=bridge)):
        bridge.generate(
            inputs["input_ids"], max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False,
            pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"],
        )
    assert {(r["layer"], r["step"]) for r in ctx.records["var"]} == {(l, s) for l in (2, 3, 4) for s in range(3)}


def test_the_bridge_wraps_a_copy_and_nnsight_keeps_working(tiny, runner, tl_runner, inputs):
    assert tl_runner.bridge.original_model is not tiny.model
    assert type(tiny.model.model.language_model.layers[0]).__name__ == "LlamaDecoderLayer"
    plain = runner.forward(inputs).logits
    with torch.no_grad():
        assert max_diff(plain, tiny.model(**inputs).logits) == 0.0


def test_a_catalogue_name_the_bridge_lacks_is_refused(tiny, tl_runner, inputs):
    table = {**tiny.catalogue.transformer_lens, "attn.hook_pattern": "blocks.{layer}.attn.hook_patern"}
    broken = dataclasses.replace(tiny, catalogue=dataclasses.replace(tiny.catalogue, transformer_lens=table))
    with pytest.raises(CatalogueError, match="hook_patern.*bridge.hook_dict"):
        transformer_lens_hooks(broken, [FindSinks(), VAR()], make_context(tiny, inputs), bridge=tl_runner.bridge)


def test_a_catalogue_without_a_transformer_lens_table_says_so(tiny, inputs):
    bare = dataclasses.replace(tiny, catalogue=dataclasses.replace(tiny.catalogue, transformer_lens={}))
    with pytest.raises(CatalogueError, match=r"no \[transformer_lens\] table.*nnsight backend"):
        transformer_lens_hooks(bare, [FindSinks()], make_context(tiny, inputs))


def test_build_bridge_in_place_rewires_the_model(tiny):
    from sinklens.models import from_hf
    from sinklens.builtin.tiny_llava import build_tiny_llava

    model, processor = build_tiny_llava()
    loaded = from_hf(model, processor, name="tiny-llava")
    bridge = build_bridge(loaded, copy_model=False)
    assert bridge.original_model is loaded.model


def test_a_transformer_lens_table_with_a_missing_key_fails_at_load(tmp_path):
    from sinklens.models.catalogue import HookCatalogue, catalogue_dir

    text = (catalogue_dir() / "llava.toml").read_text()
    broken = tmp_path / "llava.toml"
    broken.write_text(text.replace('"entry" = "hook_embed"\n', ""))
    with pytest.raises(CatalogueError, match=r"\[transformer_lens\]: unknown keys \[\], missing keys \['entry'\]"):
        HookCatalogue.from_file(broken)


# --- the 2026 families: each through its bridge adapter, or an error naming what the adapter lacks ----------

BRIDGED_FAMILIES = ["tiny-llava-onevision", "tiny-gemma3", "tiny-smolvlm", "tiny-mistral3"]


@pytest.mark.slow  # a bridge per family, 8 steps per stack
@pytest.mark.parametrize("name", BRIDGED_FAMILIES)
def test_the_new_families_run_on_their_bridge_adapters_as_on_nnsight(name):
    """Every layer point holds the same tensor; FindSinks + VAR, PAI and an edit give the same logits over 8 steps."""
    from conftest import demo_inputs, loaded, runner_for
    from sinklens.backends.transformer_lens_backend import TransformerLensRunner

    lm, inputs, runner_ = loaded(name), demo_inputs(name), runner_for(name)
    tl = TransformerLensRunner(lm)
    names = [block(1, point) for point in LAYER_POINTS] + ["hook_logits"]
    nn_seen, tl_seen = capture(runner_, inputs, names), capture(tl, inputs, names)
    for point in names:
        assert nn_seen[point].shape == tl_seen[point].shape, point
        assert max_diff(nn_seen[point], tl_seen[point]) <= 1e-6, point
    plain = runner_.generate(inputs, [], max_new_tokens=STEPS).step_logits
    for stack in ([FindSinks(), VAR(heads="all")], [PAI(alpha=0.5)], [("blocks.1.hook_resid_post", scale_resid)]):
        nn_generation = runner_.generate(inputs, stack, max_new_tokens=STEPS)
        tl_generation = tl.generate(inputs, stack, max_new_tokens=STEPS)
        assert max_diff(nn_generation.step_logits, plain) > 1e-4  # the stack acts
        assert max_diff(nn_generation.step_logits, tl_generation.step_logits) <= TOLERANCE
        assert nn_generation.tokens == tl_generation.tokens


def test_qwen3_vl_on_transformer_lens_names_what_its_adapter_lacks():
    import importlib.util

    from conftest import loaded
    from sinklens.backends.transformer_lens_backend import TransformerLensRunner
    from sinklens.errors import BackendError

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here: TransformerLens' Qwen3-VL adapter builds; this checks the error without it")
    with pytest.raises(BackendError, match="torchvision.*nnsight backend"):
        TransformerLensRunner(loaded("tiny-qwen3-vl"))
