"""Analysis interventions on the tiny built-ins against naive oracles (nnsight; TransformerLens where cheap)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

import oracles
from sinklens import (
    VAR, AttentionContribution, AttentionMaps, FindSinks, HeadScores, Hook, RandomAblation, SinkAblation,
)
from sinklens.errors import MissingSinksError, ParameterError
from sinklens.interventions import image_map

from conftest import ARCHS, demo_inputs, loaded, max_diff, runner_for
from oracle_var import language_model
from test_var_nnsight import assert_matches_oracle

TOLERANCE = 1e-5


def capture(store, key, value, ctx):
    store[key] = value.detach().clone()


def capture_hooks(store, n_layers, point):
    return [Hook(f"blocks.{l}.{point}", partial(capture, store, l), writes=False) for l in range(n_layers)]


# --- attention contribution ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-next", "tiny-internvl"])  # MHA, then GQA twice
def test_contribution_sums_to_the_attention_output(name):
    lm, runner, inputs = loaded(name), runner_for(name), demo_inputs(name)
    out_proj = {}
    stack = [AttentionContribution(), *capture_hooks(out_proj, lm.n_layers, "hook_attn_out")]
    ctx = runner.forward(inputs, stack).ctx
    first = int(ctx.image.text_start.min())
    diff = max(max_diff(ctx.records["contribution_output"][l], out_proj[l][:, first:]) for l in range(lm.n_layers))
    assert diff <= TOLERANCE, f"sum of contribution vectors vs o_proj output: max abs diff {diff}"


@pytest.mark.slow  # a Python loop oracle over every head, query and key
def test_contribution_norms_match_the_loop_oracle():
    name = "tiny-llava-next"  # GQA
    lm, runner, inputs = loaded(name), runner_for(name), demo_inputs(name)
    values, patterns = {}, {}
    layer = 3
    stack = [AttentionContribution(layers=[layer]),
             Hook(f"blocks.{layer}.attn.hook_v", partial(capture, values, layer), writes=False),
             Hook(f"blocks.{layer}.attn.hook_pattern", partial(capture, patterns, layer), writes=False)]  # fmt: skip
    ctx = runner.forward(inputs, stack).ctx
    assert list(ctx.records["contribution"]) == [layer]
    first = int(ctx.image.text_start.min())
    w_o = language_model(lm.model).layers[layer].self_attn.o_proj.weight.detach()
    pattern = patterns[layer][:, :, first:][:, :, :2]  # two query rows keep the loop oracle quick
    expected = oracles.attention_contribution(pattern, values[layer], w_o)
    torch.testing.assert_close(ctx.records["contribution"][layer][:, :, :2].double(), expected, atol=1e-5, rtol=1e-4)


def tiny_llava_with_attention_bias():
    """tiny-llava's structure with biases on q, k, v and o (LLaMA's attention_bias), random weights."""
    from transformers import LlavaForConditionalGeneration

    from sinklens.models import from_hf
    from sinklens.builtin.tiny_llava import tiny_llava_config, tiny_processor

    config = tiny_llava_config()
    config.text_config.attention_bias = True
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return from_hf(LlavaForConditionalGeneration(config).eval(), tiny_processor(), name="tiny-llava")


def test_an_output_projection_with_a_bias_is_refused_in_both_backends():
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.backends.transformer_lens_backend import TransformerLensRunner

    lm = tiny_llava_with_attention_bias()
    inputs = demo_inputs("tiny-llava")
    for runner in (NnsightRunner(lm), TransformerLensRunner(lm)):
        with pytest.raises(ParameterError, match="layer 1's attention output projection has a bias"):
            runner.forward(inputs, [AttentionContribution(layers=[1])])


def test_the_intervention_holds_no_weights_and_reads_them_at_run_time():
    contribution = AttentionContribution(layers=[1, 2])
    assert contribution == AttentionContribution(layers=[1, 2])  # plain values only
    assert not any(isinstance(value, torch.Tensor) for value in vars(contribution).values())
    lm, runner, inputs = loaded("tiny-llava"), runner_for("tiny-llava"), demo_inputs("tiny-llava")
    o_proj = language_model(lm.model).layers[1].self_attn.o_proj
    before = runner.forward(inputs, [contribution]).ctx.records["contribution"][1]
    saved = o_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            o_proj.weight.mul_(2.0)
        after = runner.forward(inputs, [contribution]).ctx.records["contribution"][1]
    finally:
        with torch.no_grad():
            o_proj.weight.copy_(saved)
    torch.testing.assert_close(after, 2 * before)  # ||2 W_O v|| = 2 ||W_O v||: the model's weight, at run time


def test_the_stack_plan_says_where_the_weights_are_read():
    from sinklens import Stack
    from sinklens.run import make_context

    ctx = make_context(loaded("tiny-llava"), demo_inputs("tiny-llava"))
    lines = Stack(AttentionContribution(layers=[1])).describe(ctx).splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["blocks.1.attn.hook_v", "reads"], ["blocks.1.attn.hook_pattern", "reads"], ["blocks.1.attn.hook_z", "reads"],
    ]
    assert ["+ weights" in line for line in lines] == [False, False, True]


@pytest.mark.parametrize("backend", ["nnsight", "transformer_lens"])
def test_weights_asked_for_where_no_module_is_fed_are_refused(backend, tl_runner):
    from sinklens.errors import HookContractError

    runner = runner_for("tiny-llava") if backend == "nnsight" else tl_runner
    hook = Hook("blocks.1.attn.hook_pattern", lambda pattern, ctx, weight, bias: None, writes=False, weights=True)
    with pytest.raises(HookContractError, match="no module with a weight.*attn.hook_z"):
        runner.forward(demo_inputs("tiny-llava"), [hook])


# --- ablation --------------------------------------------------------------------------------------


def renormalise_without(pattern, ctx, *, keys_of, first_of):
    """The naive equivalent of -inf before the softmax: zero the keys in text rows and renormalise, row by row."""
    out = pattern.clone()
    keys = keys_of(ctx)
    first = first_of(ctx)
    for b in range(pattern.shape[0]):
        drop = [j for j in range(pattern.shape[-1]) if j < keys.shape[-1] and keys[b, j]]
        for h in range(pattern.shape[1]):
            for i in range(first, pattern.shape[2]):
                row = pattern[b, h, i].tolist()
                kept = sum(v for j, v in enumerate(row) if j not in drop)
                if kept <= 0:
                    continue  # exempt: no key left
                out[b, h, i] = torch.tensor([0.0 if j in drop else v / kept for j, v in enumerate(row)])
    return out


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_sink_ablation_equals_zero_and_renormalise(name):
    lm, runner, inputs = loaded(name), runner_for(name), demo_inputs(name)
    ablated = runner.forward(inputs, [FindSinks(), SinkAblation()])
    visual = {l: ablated.ctx.sinks[l] & ablated.ctx.image.mask for l in ablated.ctx.sinks}
    assert all(v.any() for v in visual.values()), "the planted scene has visual sinks in every layer"
    first = int(ablated.ctx.image.text_start.min())
    naive = [FindSinks()] + [
        Hook(f"blocks.{l}.attn.hook_pattern",
             partial(renormalise_without, keys_of=lambda ctx, l=l: ctx.sinks[l] & ctx.image.mask, first_of=lambda ctx: first))
        for l in range(lm.n_layers)
    ]  # fmt: skip
    reference = runner.forward(inputs, naive)
    diff = max_diff(ablated.logits, reference.logits)
    assert diff <= TOLERANCE, f"max abs diff {diff}"
    assert max_diff(ablated.logits, runner.forward(inputs).logits) > 1e-3
    assert ablated.ctx.records["ablation"][2].tolist() == [int(visual[2][0].sum())]


def test_sink_ablation_of_every_visible_key_exempts_the_query():
    lm, runner, inputs = loaded("tiny-llava"), runner_for("tiny-llava"), demo_inputs("tiny-llava")
    everything = list(range(inputs["input_ids"].shape[1]))
    # each text query would lose every key: all are exempt, so nothing changes
    logits = runner.forward(inputs, [SinkAblation(positions=everything)]).logits
    assert torch.equal(logits, runner.forward(inputs).logits)


def test_sink_ablation_through_both_backends(tl_runner):
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    stack = [FindSinks(), SinkAblation(), VAR()]
    a = runner.generate(inputs, stack, max_new_tokens=4)
    b = tl_runner.generate(inputs, stack, max_new_tokens=4)
    assert max_diff(a.step_logits, b.step_logits) <= TOLERANCE


def test_random_ablation_is_seeded_and_differs_across_layers():
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    first = runner.generate(inputs, [FindSinks(), RandomAblation(seed=3)], max_new_tokens=4)
    again = runner.generate(inputs, [FindSinks(), RandomAblation(seed=3)], max_new_tokens=4)
    other = runner.forward(inputs, [FindSinks(), RandomAblation(seed=4)])
    drawn = first.ctx.records["random_ablation"]
    assert torch.equal(first.step_logits, again.step_logits)
    assert all(torch.equal(drawn[l], again.ctx.records["random_ablation"][l]) for l in drawn)
    assert len({tuple(drawn[l][0].nonzero().flatten().tolist()) for l in drawn}) > 1, "re-drawn per layer"
    assert any(not torch.equal(drawn[l], other.ctx.records["random_ablation"][l]) for l in drawn)
    image, sinks = first.ctx.image.mask, first.ctx.sinks
    for l, keys in drawn.items():
        assert keys.sum() == (sinks[l] & image).sum(), "as many as the visual sinks"
        assert not (keys & ~image).any() and not (keys & sinks[l]).any(), "image tokens that are not sinks"


def test_random_ablation_masks_its_draw():
    lm, runner, inputs = loaded("tiny-llava"), runner_for("tiny-llava"), demo_inputs("tiny-llava")
    ablated = runner.forward(inputs, [FindSinks(), RandomAblation(seed=0, count=5)])
    drawn = ablated.ctx.records["random_ablation"]
    first = int(ablated.ctx.image.text_start.min())
    naive = [Hook(f"blocks.{l}.attn.hook_pattern",
                  partial(renormalise_without, keys_of=lambda ctx, l=l: drawn[l], first_of=lambda ctx: first))
             for l in range(lm.n_layers)]  # fmt: skip
    assert max_diff(ablated.logits, runner.forward(inputs, naive).logits) <= TOLERANCE


# --- head scores and maps --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-internvl"])
def test_head_scores_and_maps_match_loop_oracles(name):
    lm, runner, inputs = loaded(name), runner_for(name), demo_inputs(name)
    patterns = {}
    stack = [FindSinks(), HeadScores(), AttentionMaps(heads=[0, 1]), *capture_hooks(patterns, lm.n_layers, "attn.hook_pattern")]
    ctx = runner.forward(inputs, stack).ctx
    image = ctx.image.mask[0].tolist()
    first = int(ctx.image.text_start[0])
    for layer in (1, 3):
        pattern = patterns[layer][0].double()
        sink = ctx.sinks[layer][0].tolist()
        n_queries = pattern.shape[1]
        for h in range(pattern.shape[0]):
            ratios = []
            for i in range(first, n_queries):
                s = sum(pattern[h, i, j].item() for j in range(len(image)) if image[j])
                ns = sum(pattern[h, i, j].item() for j in range(len(image)) if image[j] and not sink[j])
                ratios.append(ns / s if s > 0 else 0.0)
            assert math.isclose(ctx.records["head_scores"][layer][0, h].item(), sum(ratios) / len(ratios), abs_tol=1e-5)
        expected = pattern[[0, 1], first:].mean(dim=(0, 1))
        torch.testing.assert_close(ctx.records["attention_maps"][layer][0].double(), expected, atol=1e-6, rtol=1e-5)
    grid = image_map(ctx, [1, 3])
    tile = max(ctx.image.images_of(0)[0].tiles, key=lambda t: t.positions.numel())
    assert grid.shape == tile.positions.shape
    row, col = 1, 2
    position = int(tile.positions[row, col])
    mean = (ctx.records["attention_maps"][1][0, position] + ctx.records["attention_maps"][3][0, position]) / 2
    assert math.isclose(grid[row, col].item(), mean.item(), rel_tol=1e-6)


def test_read_only_members_leave_the_logits_alone():
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    stack = [FindSinks(), AttentionContribution(), HeadScores(), AttentionMaps(queries="last")]
    assert torch.equal(runner.forward(inputs, stack).logits, runner.forward(inputs).logits)


# --- VAR's ablation modes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
@pytest.mark.parametrize("convention", ["paper", "released"])
@pytest.mark.parametrize(
    "modes",
    [{"heads": "all"}, {"destination": "text"}, {"destination": "both"}, {"heads": "all", "destination": "both"}],
)
def test_var_modes_match_the_oracle(name, convention, modes):
    stack = [FindSinks(convention=convention), VAR(convention=convention, **modes)]
    assert_matches_oracle(name, demo_inputs(name), stack, convention, modes)


def test_var_modes_differ_from_the_method():
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    # rho = 0.99 leaves heads out of the selection on the planted scene (at 0.8 every head is selected)
    base = runner.forward(inputs, [FindSinks(), VAR(rho=0.99)])
    assert sum(r["n_image_centric"] for r in base.ctx.records["var"]) < 3 * 8 * 8
    edited = runner.forward(inputs, [FindSinks(), VAR(rho=0.99, heads="all")]).logits
    assert max_diff(edited, base.logits) > 1e-4
    method = runner.forward(inputs, [FindSinks(), VAR()]).logits
    for destination in ("text", "both"):
        edited = runner.forward(inputs, [FindSinks(), VAR(destination=destination)]).logits
        assert max_diff(edited, method) > 1e-4, destination


# --- bad input ----------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_the_fix():
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    with pytest.raises(MissingSinksError, match="put FindSinks"):
        runner.forward(inputs, [SinkAblation()])
    with pytest.raises(MissingSinksError, match="put FindSinks"):
        runner.forward(inputs, [HeadScores()])
    with pytest.raises(ParameterError, match="keys must be one of"):
        SinkAblation(keys="all")
    with pytest.raises(ParameterError, match="seed must be"):
        RandomAblation(seed=-1)
    with pytest.raises(ParameterError, match="heads must be one of"):
        VAR(heads="some")
    with pytest.raises(ParameterError, match="destination must be one of"):
        VAR(destination="sinks")
    with pytest.raises(ParameterError, match="queries must be one of"):
        AttentionMaps(queries="first")
    with pytest.raises(ParameterError, match="past the prompt"):
        runner.forward(inputs, [SinkAblation(positions=[10_000])])
    with pytest.raises(ParameterError, match="heads .* do not exist"):
        runner.forward(inputs, [AttentionMaps(heads=[99])])


def test_records_agree_across_backends(tl_runner):
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    stack = [FindSinks(), AttentionContribution(), HeadScores(), AttentionMaps()]
    a, b = runner.forward(inputs, stack).ctx, tl_runner.forward(inputs, stack).ctx
    for key in ("contribution", "contribution_output", "head_scores", "attention_maps"):
        diff = max(max_diff(a.records[key][l], b.records[key][l]) for l in a.records[key])
        assert diff <= TOLERANCE, f"{key}: nnsight vs TransformerLens max abs diff {diff}"


def test_transformer_lens_hooks_without_the_bridge_cannot_find_the_weights():
    from sinklens.run import make_context
    from sinklens.backends.transformer_lens_backend import transformer_lens_hooks
    from sinklens.errors import BackendError

    lm, inputs = loaded("tiny-llava"), demo_inputs("tiny-llava")
    with pytest.raises(BackendError, match=r"blocks\.1\.attn\.hook_z.*bridge=bridge"):
        transformer_lens_hooks(lm, [AttentionContribution(layers=[1])], make_context(lm, inputs))
