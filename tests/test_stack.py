"""A stack equals the hand-written sequential application of its members, in both backends.

The oracle (oracle_stack.py) is a second tiny-llava whose attention is written
out by hand: PAI's boost on the scores, the softmax, then the pattern edits in
a given order (VAR from oracle_var.py, and the user's edit), plus a forward hook
for the user's residual edit. The stacks under test list their members in
different orders: at one hook point the list order is the run order, across
points the forward pass decides.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from sinklens import PAI, VAR, VCD, Edit, FindSinks, Hook, LogitsHook, OnPass, Stack, expand_inputs
from sinklens.run import make_context
from sinklens.errors import HookContractError, HookNameError, ParameterError, PassError, StackError
from sinklens.builtin.tiny_llava import TINY_SINK_DIM, build_tiny_llava

from conftest import QUESTION, assert_steps_close, max_diff
from oracle_stack import OracleStack, install, scale_layer_output
from oracle_var import OracleVAR

STEPS = 8
TOLERANCE = 1e-5
PAI_ALPHA = 0.5
DAMP_LAYER, SCALE_LAYER = 3, 4


def damp_first_key(pattern, ctx):
    """A user's pattern edit: halve the attention every query pays to the first key (BOS)."""
    pattern[..., 0] *= 0.5
    return pattern


def scale_resid(resid, ctx):
    return resid * 1.25


def user_pattern_edit():
    return (f"blocks.{DAMP_LAYER}.attn.hook_pattern", damp_first_key)


def user_resid_edit():
    return Edit(f"blocks.{SCALE_LAYER}.hook_resid_post", scale_resid)


def stack_var_first():
    return Stack(FindSinks(), PAI(alpha=PAI_ALPHA), VAR(), user_pattern_edit(), user_resid_edit())


def stack_user_first():
    return Stack(FindSinks(), PAI(alpha=PAI_ALPHA), user_pattern_edit(), VAR(), user_resid_edit())


def stack_var_first_listed_backwards():
    # same run order as stack_var_first: the members sit at different points, except VAR and the
    # user's pattern edit, which keep their relative order
    return Stack(user_resid_edit(), VAR(), user_pattern_edit(), PAI(alpha=PAI_ALPHA), FindSinks())


@cache
def oracle(order: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(prefill logits, step logits, image-centric rows) of the hand-written stack, edits in `order`."""
    from sinklens.models import load
    from sinklens.builtin.tiny_llava import draw_scene

    inputs = load("tiny-llava").prepare(draw_scene(), QUESTION)
    model, _ = build_tiny_llava()
    n_layers = model.config.text_config.num_hidden_layers
    image_positions = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten().tolist()
    var = OracleVAR.for_prompt(inputs, model.config.image_token_id, dims=(TINY_SINK_DIM,),
                               layers=tuple(range(2, n_layers - 1)))  # fmt: skip

    def damp(layer, probs):
        if layer != DAMP_LAYER:
            return probs
        out = probs.clone()
        out[..., 0] = out[..., 0] * 0.5
        return out

    edits = {"var": var.edit, "damp": damp}
    stack = OracleStack(
        image_positions=image_positions, pai_alpha=PAI_ALPHA, pai_layers=tuple(range(2, n_layers)),
        pattern_edits=[edits[name] for name in order],
    )
    install(model, stack, var)
    scale_layer_output(model, SCALE_LAYER, 1.25)
    with torch.no_grad():
        prefill = model(**inputs).logits
        var.sinks.clear()
        out = model.generate(
            **inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
            output_logits=True, return_dict_in_generate=True, pad_token_id=3,
        )
    return prefill, torch.stack(out.logits, dim=1), var.n_selected


@pytest.mark.parametrize(
    ("make_stack", "order"),
    [
        pytest.param(stack_var_first, ("var", "damp"), id="var-then-user"),
        pytest.param(stack_user_first, ("damp", "var"), id="user-then-var"),
        pytest.param(stack_var_first_listed_backwards, ("var", "damp"), id="listed-backwards"),
    ],
)
def test_stack_equals_the_sequential_oracle(any_runner, inputs, make_stack, order):
    expected_prefill, expected_steps, n_selected = oracle(order)
    assert n_selected > 0, "VAR must act in the oracle run"
    forward = any_runner.forward(inputs, make_stack())
    assert max_diff(forward.logits, expected_prefill) <= TOLERANCE
    generation = any_runner.generate(inputs, make_stack(), max_new_tokens=STEPS)
    assert_steps_close(generation.step_logits, expected_steps, TOLERANCE)


def test_order_at_one_point_changes_the_result_and_order_across_points_does_not(any_runner, inputs):
    var_first = any_runner.forward(inputs, stack_var_first()).logits
    user_first = any_runner.forward(inputs, stack_user_first()).logits
    backwards = any_runner.forward(inputs, stack_var_first_listed_backwards()).logits
    assert max_diff(var_first, user_first) > 1e-3  # VAR and the user's edit share blocks.3.attn.hook_pattern
    assert torch.equal(var_first, backwards)
    swapped = Stack(FindSinks(), VAR(), PAI(alpha=PAI_ALPHA))  # PAI acts on the scores before VAR whatever the list
    assert torch.equal(
        any_runner.forward(inputs, swapped).logits,
        any_runner.forward(inputs, [FindSinks(), PAI(alpha=PAI_ALPHA), VAR()]).logits,
    )


def test_each_member_of_the_composition_matters(runner, inputs):
    full = runner.forward(inputs, stack_var_first()).logits
    for without in ("PAI", "VAR", "user"):
        members = [m for m in stack_var_first() if not _is(m, without)]
        assert max_diff(full, runner.forward(inputs, members).logits) > 1e-4, f"without {without}"


def _is(member, kind):
    if kind == "user":
        return isinstance(member, (tuple, Edit))
    return type(member).__name__ == kind


def test_a_stack_is_accepted_where_a_list_was_and_nests(runner, inputs):
    as_list = runner.forward(inputs, [FindSinks(), VAR()]).logits
    assert torch.equal(runner.forward(inputs, Stack(FindSinks(), VAR())).logits, as_list)
    assert torch.equal(runner.forward(inputs, [Stack(FindSinks()), Stack(VAR())]).logits, as_list)
    assert torch.equal(runner.forward(inputs, Stack([FindSinks(), VAR()])).logits, as_list)


def test_plan_lists_reads_and_writes_in_run_order(tiny, inputs):
    ctx = make_context(tiny, inputs)
    plan = [hook for point in stack_user_first().plan(ctx) for hook in point.hooks]
    layer_3 = [(entry.name, entry.member.split("(")[0], entry.writes) for entry in plan if ".3." in entry.name]
    assert layer_3 == [
        ("blocks.3.hook_resid_pre", "FindSinks", False),
        ("blocks.3.attn.hook_attn_scores", "PAI", True),
        ("blocks.3.attn.hook_pattern", "", True),  # the user's pair: no member label
        ("blocks.3.attn.hook_pattern", "VAR", True),
    ]
    assert [entry.name for entry in plan[-2:]] == ["blocks.5.hook_resid_pre", "blocks.5.attn.hook_attn_scores"]
    described = stack_user_first().describe(ctx)
    assert "damp_first_key" in described and "reads, writes" in described and "(prefill only)" in described


# ---- a user's function in one line ------------------------------------------------------------


def test_a_user_function_joins_in_one_line_on_any_point(any_runner, inputs):
    seen = []
    stack = [("blocks.1.hook_resid_pre", lambda resid, ctx: seen.append(resid.shape))]
    any_runner.generate(inputs, stack, max_new_tokens=3)
    assert [shape[1] for shape in seen] == [inputs["input_ids"].shape[1], 1, 1]


def test_logits_hook_sees_the_next_token_logits_at_every_step(any_runner, inputs):
    steps = []

    def ban_token_80(logits, ctx):
        steps.append((ctx.step, tuple(logits.shape)))
        logits = logits.clone()
        logits[:, 80] = float("-inf")
        return logits

    plain = any_runner.generate(inputs, max_new_tokens=4)
    banned = any_runner.generate(inputs, [LogitsHook(ban_token_80)], max_new_tokens=4)
    assert 80 in plain.tokens[0] and 80 not in banned.tokens[0]
    assert steps == [(step, (1, plain.step_logits.shape[-1])) for step in range(4)]


# ---- bad input ------------------------------------------------------------------------------------


def test_a_member_that_is_not_an_intervention_is_refused():
    with pytest.raises(StackError, match="intervention .*Hook.*pair; got int 3"):
        Stack(FindSinks(), 3)


def test_a_pair_with_an_unknown_hook_name_is_refused():
    with pytest.raises(HookNameError, match="hook_resid_pre"):
        Stack(("blocks.0.hook_resid", lambda x, ctx: x))
    with pytest.raises(HookNameError):
        Edit("logits", lambda x, ctx: x)


def test_a_read_only_hook_that_writes_is_refused(runner, inputs):
    stack = [Hook("blocks.1.hook_resid_pre", lambda resid, ctx: resid * 2, writes=False)]
    with pytest.raises(HookContractError, match="read-only .*writes=True"):
        runner.forward(inputs, stack)


def test_a_write_that_changes_the_shape_is_refused(tl_runner, inputs):
    with pytest.raises(HookContractError, match=r"returned \(1, 8, 53, 52\).*same shape"):
        tl_runner.forward(inputs, [("blocks.1.attn.hook_pattern", lambda pattern, ctx: pattern[..., :-1])])


def test_two_members_that_expand_the_batch_are_refused(inputs):
    with pytest.raises(StackError, match="at most one"):
        expand_inputs(Stack(VCD(), VCD(alpha=2.0)), inputs)


def test_on_pass_without_vcd_says_to_add_it(runner, inputs):
    with pytest.raises(PassError, match="add VCD"):
        runner.forward(inputs, [FindSinks(), OnPass("image", VAR())])
    with pytest.raises(PassError, match="'image' or 'noised'"):
        OnPass("clean", VAR())


def test_vcd_in_a_trace_without_expanded_inputs_says_how(tiny, inputs):
    with pytest.raises(PassError, match="expand_inputs"):
        VCD().hooks(make_context(tiny, inputs))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PAI(alpha=-0.1), "alpha must be >= 0"),
        (lambda: VCD(alpha=-1.0), "alpha must be >= 0"),
        (lambda: VCD(beta=1.5), r"beta must be in \[0, 1\]"),
        (lambda: VCD(noise_step=1000), r"noise_step must be an integer in \[0, 999\]"),
    ],
)
def test_peer_parameters_out_of_range(make, message):
    with pytest.raises(ParameterError, match=message):
        make()
