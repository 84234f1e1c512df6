"""The run core (sinklens.run): the one rule for repeated members, non-finite writes refused at the hook
point, the run state (spec once, scratch never shipped), and the row helper every hook function goes
through (a tensor holding only the rows from `held_from` gives the same edit as the eager one)."""

from __future__ import annotations

import pickle
from functools import partial

import pytest
import torch

import sinklens as sl
from sinklens.errors import NonFiniteError, StackError
from sinklens.interventions.analysis import (
    AttentionContribution, AttentionMaps, HeadScores, RandomAblation, SinkAblation,
)
from sinklens.models.spans import ImageSpans
from sinklens.run import Findings, Runner, RunContext, RunSpec, make_context, plan

from conftest import QUESTION


# ---- non-finite values ---------------------------------------------------------------------------


def nan_at_first_key(pattern, ctx):  # a user's hook with a bug: 0 / 0
    pattern[..., 0] = pattern[..., 0] * 0.0 / 0.0
    return pattern


def inf_resid(resid, ctx):
    return resid * float("inf")


def test_a_hook_that_writes_nan_is_refused_naming_the_function_and_the_point(runner, inputs):
    stack = [sl.FindSinks(), sl.VAR(), ("blocks.3.attn.hook_pattern", nan_at_first_key)]
    with pytest.raises(NonFiniteError, match=r"nan_at_first_key at 'blocks\.3\.attn\.hook_pattern'.*NaN"):
        runner.generate(inputs, stack, max_new_tokens=2)


def test_a_member_that_writes_inf_is_refused_naming_the_member(any_runner, inputs):
    class Broken:  # an intervention of the user's, named in the message
        def hooks(self, ctx):
            return [sl.Hook("blocks.1.hook_resid_post", inf_resid)]

    with pytest.raises(NonFiniteError, match=r"Broken's hook function inf_resid at 'blocks\.1\.hook_resid_post'"):
        any_runner.forward(inputs, [Broken()])


def test_minus_inf_is_a_mask_where_a_softmax_or_a_choice_follows(runner, inputs):
    # SinkAblation writes -inf at hook_attn_scores, VCD's cut-off -inf at hook_logits: both are masks
    result = runner.forward(inputs, [sl.FindSinks(), SinkAblation(keys="sinks"), sl.VCD(beta=0.5)])
    assert torch.isinf(result.logits).any() and not torch.isnan(result.logits).any()
    with pytest.raises(NonFiniteError, match="-inf"):
        runner.forward(inputs, [("blocks.1.hook_resid_pre", lambda resid, ctx: resid - float("inf"))])


# ---- repeated members ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stack", "kind"),
    [
        (lambda: sl.Stack(sl.FindSinks(), sl.VAR(), sl.VAR()), "VAR"),
        (lambda: sl.Stack(sl.FindSinks(tau=1.0), sl.FindSinks(tau=2.0), sl.VAR()), "FindSinks"),
        (lambda: [sl.FindSinks(), sl.Stack(sl.PAI()), sl.PAI(alpha=0.2)], "PAI"),
        (lambda: [sl.FindSinks(), HeadScores(), HeadScores(layers=[2])], "HeadScores"),
        (lambda: [sl.FindSinks(), sl.OnPass("image", sl.VAR()), sl.OnPass("image", sl.VAR(p=0.1))], "OnPass"),
    ],
)
def test_two_members_of_one_kind_at_one_point_are_refused(tiny, inputs, stack, kind):
    with pytest.raises(StackError, match=f"two {kind}.*at most once per hook point.*disjoint layers"):
        plan(stack(), make_context(tiny, inputs))


def test_the_same_member_listed_twice_is_refused(tiny, inputs):
    var = sl.VAR()
    with pytest.raises(StackError, match="two VAR"):
        plan([sl.FindSinks(), var, var], make_context(tiny, inputs))


def test_members_of_one_kind_on_disjoint_layers_or_passes_compose(tiny, inputs):
    ctx = make_context(tiny, inputs)
    stacks = [
        [sl.FindSinks(layers=[0, 1, 2]), sl.FindSinks(layers=[3, 4, 5]), sl.VAR(layers=[2]), sl.VAR(layers=[3], p=0.2)],
        [sl.FindSinks(), sl.OnPass("image", sl.VAR()), sl.OnPass("noised", sl.VAR(p=0.2))],
        # a user's own functions compose freely, in list order
        [("blocks.2.hook_resid_post", inf_resid), ("blocks.2.hook_resid_post", inf_resid), sl.Edit("blocks.2.hook_resid_post", inf_resid)],
    ]
    for stack in stacks:
        assert plan(stack, ctx)


def test_two_vcd_are_refused_before_the_batch_is_doubled(runner, inputs):
    with pytest.raises(StackError, match="at most one"):
        runner.forward(inputs, [sl.VCD(), sl.VCD(alpha=0.5)])


# ---- the run state -------------------------------------------------------------------------------


def test_image_spans_are_computed_once_per_run(runner, inputs, monkeypatch):
    import sinklens.models.loaded as loading

    calls = []
    real = loading.image_spans
    monkeypatch.setattr(loading, "image_spans", lambda *args: calls.append(1) or real(*args))
    runner.generate(inputs, [sl.FindSinks(), sl.VAR()], max_new_tokens=3)
    assert len(calls) == 1


def test_scratch_space_never_travels_and_findings_do(tiny, inputs):
    ctx = make_context(tiny, inputs)
    ctx.scratch["kept"] = torch.ones(3)
    ctx.found.add("sinks", torch.zeros(1, 4, dtype=torch.bool), layer=2)
    ctx.found.add("var", {"layer": 2})
    copy = pickle.loads(pickle.dumps(ctx))
    assert copy.scratch == {} and torch.equal(copy.sinks[2], ctx.sinks[2]) and copy.records == {"var": [{"layer": 2}]}
    assert set(ctx.state()) == {"sinks", "phi", "records", "positional"}


def test_attention_contribution_keeps_its_rows_in_scratch_not_in_the_records(runner, inputs):
    ctx = runner.forward(inputs, [AttentionContribution(layers=[1])]).ctx
    assert set(ctx.records) == {"contribution", "contribution_output"} and ctx.scratch == {"_values": {}, "_patterns": {}}


def test_both_runners_satisfy_the_runner_protocol(runner, tl_runner):
    assert isinstance(runner, Runner) and isinstance(tl_runner, Runner)


def test_sink_dimension_scan_is_declared_read_only(tiny, inputs):
    ctx = make_context(tiny, inputs)
    assert all(not hook.writes for hook in sl.SinkDimensionScan().hooks(ctx))


# ---- rows: every attention hook function through ctx.query_rows ----------------------------------


def attention_case(held_from: int):
    """A prefill context of 2 left-padded prompts and one [batch, head, query, key] tensor of each kind."""
    n_pos = 9
    image = torch.zeros(2, n_pos, dtype=torch.bool)
    image[0, 1:5], image[1, 2:5] = True, True
    attention_mask = torch.ones(2, n_pos, dtype=torch.bool)
    attention_mask[1, 0] = False
    sinks = torch.zeros(2, n_pos, dtype=torch.bool)
    sinks[:, 2] = sinks[:, 5] = True
    spec = RunSpec.of(ImageSpans(mask=image), attention_mask, n_layers=4)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1)
    scores = torch.randn(2, 3, n_pos, n_pos, generator=generator).masked_fill(hidden, torch.finfo(torch.float32).min)
    ctx = RunContext(spec, found=Findings(sinks={layer: sinks for layer in range(4)}))
    ctx.enter_point(held_from)
    return ctx, scores, scores.softmax(-1)


def hook_fn(member, name):
    (hook,) = [hook for hook in member.hooks(attention_case(0)[0]) if hook.name == name]
    return hook.fn


PATTERN = "blocks.2.attn.hook_pattern"
SCORES = "blocks.2.attn.hook_attn_scores"
ROW_MEMBERS = {
    "VAR": (sl.VAR(rho=0.1, summ=0.0), PATTERN),
    "VAR-released": (sl.VAR(convention="released", p=0.5, rho=0.9, summ=0.0), PATTERN),
    "PAI": (sl.PAI(alpha=0.5), SCORES),
    "SinkAblation": (SinkAblation(keys="sinks"), SCORES),
    "RandomAblation": (RandomAblation(seed=1), SCORES),
    "HeadScores": (HeadScores(), PATTERN),
    "AttentionMaps": (AttentionMaps(), PATTERN),
    "AttentionMaps-last": (AttentionMaps(queries="last"), PATTERN),
}


@pytest.mark.parametrize("name", list(ROW_MEMBERS))
def test_a_tensor_holding_only_the_rows_from_held_from_gives_the_eager_result(name):
    member, point = ROW_MEMBERS[name]
    fn = hook_fn(member, point)
    eager_ctx, scores, pattern = attention_case(0)
    tensor = pattern if point == PATTERN else scores
    eager = fn(tensor.clone(), eager_ctx)
    for held_from in (3, 5):  # the earliest text start is 5: from before it, and exactly from it
        rows_ctx = attention_case(held_from)[0]
        held = fn(tensor[:, :, held_from:].clone(), rows_ctx)
        if eager is None:  # a reader: the same records
            assert rows_ctx.records.keys() == eager_ctx.records.keys()
            for key in eager_ctx.records:
                torch.testing.assert_close(rows_ctx.records[key][2], eager_ctx.records[key][2])
        else:
            torch.testing.assert_close(held, eager[:, :, held_from:])
            assert torch.equal(eager[:, :, :5], tensor[:, :, :5])  # no row before the text is touched


@pytest.mark.parametrize("name", ["VAR", "VAR-released", "PAI", "SinkAblation", "RandomAblation"])
def test_each_writer_changes_text_rows_in_the_row_case(name):
    member, point = ROW_MEMBERS[name]
    ctx, scores, pattern = attention_case(0)
    tensor = pattern if point == PATTERN else scores
    assert not torch.equal(hook_fn(member, point)(tensor.clone(), ctx)[:, :, 5:], tensor[:, :, 5:])


def test_pai_masks_follow_the_scores_device():
    # PAI made its masks on the inputs' device; a layer on another device (here: meta) failed
    ctx, scores, _ = attention_case(0)
    out = hook_fn(sl.PAI(), SCORES)(scores.to("meta"), ctx)
    assert out.device.type == "meta" and out.shape == scores.shape


def test_var_rows_while_decoding_are_the_new_token(runner, inputs):
    ctx = make_context(runner.loaded, inputs)
    ctx.enter_step(1)
    rows = ctx.query_rows(torch.zeros(1, 2, 1, inputs["input_ids"].shape[1] + 1))
    assert rows.start == 0 and rows.queries.tolist() == [[True]]


# ---- one generate call, module by module (docs/architecture.md) ----------------------------------

GENERATE_PATH = {
    "sinklens.backends.nnsight_backend", "sinklens.run.context", "sinklens.run.hooks", "sinklens.run.inputs",
    "sinklens.run.plan", "sinklens.run.results", "sinklens.models.loaded", "sinklens.models.spans",
    "sinklens.models.grids",
    "sinklens.hook_points", "sinklens.models.catalogue", "sinklens.interventions.sinks", "sinklens.interventions.var",
}


def test_one_generate_with_findsinks_and_var_runs_code_in_the_modules_of_its_path(runner, inputs):
    import sys
    import threading

    stack = [sl.FindSinks(), sl.VAR()]
    seen = set()

    def profile(frame, event, arg):
        name = frame.f_globals.get("__name__", "")
        if event == "call" and name.startswith("sinklens.") and not name.startswith("sinklens.ops"):
            seen.add(name)

    threading.setprofile(profile)  # nnsight may run the trace's body in another thread
    sys.setprofile(profile)
    try:
        runner.generate(inputs, stack, max_new_tokens=2)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert seen == GENERATE_PATH
