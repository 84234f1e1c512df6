"""The rows route gives the eager route's results: every stack, every tiny architecture, prefill and decoding.

Two loads of each tiny built-in, one per route (`sinklens.load(name,
attention=...)`), run the same stacks through `NnsightRunner`: logits within
1e-5 (fp32) in prefill and over 8 greedy decoding steps, the same tokens, and
the same findings (sinks, phi, records: the read-only members' results). Also
in a left-padded batch, through nnsight's remote simulation, and with a user's
hook that reads every row of the pattern (that layer then computes every row
explicitly: eager's pattern, never a partial one).
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

import sinklens as sl
from conftest import ARCHS, QUESTION, assert_logits_close, assert_records_close, max_diff
from sinklens.backends.nnsight_backend import NnsightRunner
from sinklens.models import load
from sinklens.builtin import demo_scene

# every stack on every tiny architecture, both routes, prefill and 8 steps: `make test` runs it, `make test-fast`
# keeps the op-level checks of the rows attention function (tests/test_rows_attention.py) and the eager core
pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
STEPS = 8

STACKS = {
    "var_paper": lambda: [sl.FindSinks(), sl.VAR()],
    "var_released": lambda: [sl.FindSinks(convention="released"), sl.VAR(convention="released")],
    "var_all_heads_to_text": lambda: [sl.FindSinks(), sl.VAR(heads="all", destination="text")],
    "var_to_every_key": lambda: [sl.FindSinks(), sl.VAR(destination="both")],
    "sink_ablation": lambda: [sl.FindSinks(), sl.SinkAblation()],
    "random_ablation": lambda: [sl.FindSinks(), sl.RandomAblation(seed=3)],
    "pai_then_var": lambda: [sl.FindSinks(), sl.PAI(), sl.VAR()],
    "analysis": lambda: [sl.FindSinks(), sl.HeadScores(), sl.AttentionMaps(), sl.AttentionContribution()],
    "last_token_maps": lambda: [sl.AttentionMaps(queries="last", heads=[0, 1])],
}  # fmt: skip


@cache
def runners(name: str) -> tuple[NnsightRunner, NnsightRunner]:
    """(eager, rows) runners of one tiny built-in, each on its own load of the same weights."""
    return NnsightRunner(load(name)), NnsightRunner(load(name, attention="rows"))


@cache
def inputs_for(name: str):
    return runners(name)[0].loaded.prepare(demo_scene(name), QUESTION)


def same_findings(eager, rows, what: str) -> None:
    """Same sinks, phi (on real tokens: a padding position's residual is garbage in both routes) and records."""
    real = eager.attention_mask
    assert sorted(eager.sinks) == sorted(rows.sinks), f"{what}: sink layers"
    for layer in eager.sinks:
        assert torch.equal(eager.sinks[layer], rows.sinks[layer]), f"{what}: sinks of layer {layer}"
        torch.testing.assert_close(eager.phi[layer][real], rows.phi[layer][real], rtol=0, atol=TOLERANCE)
    assert_records_close(eager.records, rows.records, what, TOLERANCE)


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("case", list(STACKS))
def test_rows_route_gives_eagers_logits_and_findings(name, case):
    eager, rows = runners(name)
    inputs = inputs_for(name)
    a, b = eager.forward(inputs, STACKS[case]()), rows.forward(inputs, STACKS[case]())
    assert_logits_close(a.logits, b.logits, TOLERANCE, f"{name} {case} prefill")
    same_findings(a.ctx, b.ctx, f"{name} {case} prefill")
    a, b = eager.generate(inputs, STACKS[case](), max_new_tokens=STEPS), rows.generate(inputs, STACKS[case](), max_new_tokens=STEPS)
    assert_logits_close(a.step_logits, b.step_logits, TOLERANCE, f"{name} {case} decoding")
    assert a.tokens == b.tokens
    same_findings(a.ctx, b.ctx, f"{name} {case} decoding")


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
@pytest.mark.parametrize("case", ["var_paper", "random_ablation", "analysis"])
def test_rows_route_in_a_left_padded_batch(name, case):
    from test_batch import examples

    eager, rows = runners(name)
    inputs = eager.loaded.prepare_batch(examples(name))
    real = inputs["attention_mask"].bool()  # padding positions hold garbage in both routes, never read
    a, b = eager.forward(inputs, STACKS[case]()), rows.forward(inputs, STACKS[case]())
    diff = max_diff(a.logits[real], b.logits[real])
    assert diff <= TOLERANCE, f"{name} {case}: max logit diff {diff} on real tokens"
    same_findings(a.ctx, b.ctx, f"{name} {case} batch")
    a, b = eager.generate(inputs, STACKS[case](), max_new_tokens=STEPS), rows.generate(inputs, STACKS[case](), max_new_tokens=STEPS)
    assert_logits_close(a.step_logits, b.step_logits, TOLERANCE, f"{name} {case} batch decoding")
    assert a.tokens == b.tokens


@pytest.mark.parametrize("case", ["var_paper", "analysis"])
@pytest.mark.ships
def test_rows_route_through_the_remote_simulation(case):
    eager, rows = runners("tiny-llava-next")
    inputs = inputs_for("tiny-llava-next")
    a, b = eager.forward(inputs, STACKS[case]()), rows.forward(inputs, STACKS[case](), remote="local")
    assert_logits_close(a.logits, b.logits, TOLERANCE, f"{case} remote prefill")
    same_findings(a.ctx, b.ctx, f"{case} remote prefill")
    a = eager.generate(inputs, STACKS[case](), max_new_tokens=STEPS)
    b = rows.generate(inputs, STACKS[case](), max_new_tokens=STEPS, remote="local")
    assert_logits_close(a.step_logits, b.step_logits, TOLERANCE, f"{case} remote decoding")
    assert a.tokens == b.tokens


def _keep_pattern(pattern, ctx, *, store):
    store.append(pattern.detach().clone())


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-internvl"])
def test_a_hook_reading_every_row_gets_the_full_pattern(name):
    """A user's hook declares no rows: its layer computes every row explicitly, eager's [T, T] pattern."""
    from functools import partial

    eager, rows = runners(name)
    inputs = inputs_for(name)
    kept = {"eager": [], "rows": []}
    for route, runner in (("eager", eager), ("rows", rows)):
        stack = [sl.FindSinks(), sl.VAR(), sl.Hook("blocks.2.attn.hook_pattern", partial(_keep_pattern, store=kept[route]), writes=False)]
        runner.forward(inputs, stack)
    (full,), (got,) = kept["eager"], kept["rows"]
    assert got.shape == full.shape and got.shape[-2] == got.shape[-1] == inputs["input_ids"].shape[1]
    torch.testing.assert_close(got, full, rtol=0, atol=1e-6)


def test_only_layers_with_an_attention_hook_compute_rows():
    """The rows a run asks for: text queries in prefill where a score/pattern hook acts, the new token while
    decoding where a hook acts then, every row where a hook reads them all; nothing elsewhere."""
    from sinklens.backends.nnsight_backend import SelectRows, locate, make_context, row_selection
    from sinklens.run import plan

    lm = runners("tiny-llava")[1].loaded
    ctx = make_context(lm, inputs_for("tiny-llava"))
    stack = [sl.FindSinks(), sl.VAR(layers=[2]), sl.HeadScores(layers=[3]), sl.AttentionContribution(layers=[1]),
             sl.Hook("blocks.4.attn.hook_pattern", lambda pattern, ctx: None, writes=False)]  # fmt: skip
    points = plan(stack, ctx)
    selection = row_selection(points, ctx)
    text_from = ctx.spec.text_from
    assert selection.prefill == {1: text_from, 2: text_from, 3: text_from, 4: 0}
    assert selection.decoding == {2, 4}  # HeadScores and AttentionContribution are prefill-only
    located = locate(lm.catalogue, points, ctx, route="rows")
    selects = [where for where in located if isinstance(where, SelectRows)]
    assert [where.layer for where in selects] == [1, 2, 3, 4]
    # layer 1's selection comes before its hook_v (AttentionContribution reads the values inside the call)
    names = [where.layer if isinstance(where, SelectRows) else where.planned.name for where in located]
    assert names.index(1) < names.index("blocks.1.attn.hook_v") < names.index("blocks.1.attn.hook_pattern")
    assert all(where.held_from == 0 for where in locate(lm.catalogue, points, ctx, route="eager"))


def test_transformer_lens_on_a_rows_model_computes_its_own_full_pattern():
    """The bridge computes attention itself (eager, every row), whatever route the loaded model runs."""
    from sinklens.backends.transformer_lens_backend import TransformerLensRunner

    eager, rows = runners("tiny-llava")
    inputs = inputs_for("tiny-llava")
    bridge = TransformerLensRunner(rows.loaded).forward(inputs, STACKS["var_paper"]())
    assert_logits_close(bridge.logits, eager.forward(inputs, STACKS["var_paper"]()).logits, TOLERANCE, "bridge")
    assert rows.loaded.model.config.text_config._attn_implementation == "sinklens_rows"  # the bridge used a copy
