"""VAF, SPIN and HGAI: each op against its loop oracle, each intervention against the same edit done by oracle hooks.

Ops: hypothesis draws scores (with masked keys), image / system key sets and
query rows; the op must equal `tests/oracle_methods.py` (fp64 loops). Runs: each
intervention through `NnsightRunner` on three tiny architectures changes the
logits, and equals a run where plain `(hook name, fn)` oracle functions make the
same edit at the same points, within 1e-5, in prefill and over 4 greedy steps;
the rows route gives eager's logits; bad parameters raise ParameterError naming
the fix.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import oracle_methods as oracle
from conftest import ARCHS, QUESTION, assert_logits_close, demo_inputs, loaded, runner_for
from sinklens.errors import LayerError, ParameterError
from sinklens.interventions.methods import HGAI, SPIN, VAF, scaled_layers
from sinklens.ops import hgai_scores, spin_head_keep, vaf_scores

TOLERANCE = 1e-5
STEPS = 4
MODELS = list(ARCHS)  # every tiny architecture
SETTINGS = settings(deadline=None, max_examples=50, database=None)
MASKED = torch.finfo(torch.float32).min


# ---- ops against the loop oracles -------------------------------------------------------------


@st.composite
def score_cases(draw, *, queries: int | None = None):
    """(scores [b, h, q, k] fp32 with some keys masked at the dtype's minimum, image, system, queries)."""
    batch, heads = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    n_queries, n_keys = queries or draw(st.integers(1, 5)), draw(st.integers(1, 9))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scores = torch.randn(batch, heads, n_queries, n_keys, generator=generator) * draw(st.sampled_from([0.1, 1.0, 10.0]))
    hidden = torch.rand(batch, 1, n_queries, n_keys, generator=generator) < draw(st.sampled_from([0.0, 0.3]))
    scores = scores.masked_fill(hidden.expand_as(scores), MASKED)
    image = torch.rand(batch, n_keys, generator=generator) < 0.5
    system = (torch.rand(batch, n_keys, generator=generator) < 0.5) & ~image
    rows = torch.rand(batch, n_queries, generator=generator) < 0.6
    return scores, image, system, rows


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    # fp32 op against the fp64 oracle; masked scores (huge) must come back bit for bit
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-5)


@SETTINGS
@given(case=score_cases(), alpha=st.floats(0, 2), beta=st.floats(0, 1))
def test_vaf_scores_match_the_oracle(case, alpha, beta):
    scores, image, system, rows = case
    got = vaf_scores(scores, image, system, rows, alpha, beta)
    close(got, oracle.vaf(scores, image, system, rows, alpha, beta))
    assert torch.equal(got[scores == MASKED], scores[scores == MASKED])


@SETTINGS
@given(case=score_cases(), alpha=st.floats(0, 2))
def test_hgai_scores_match_the_oracle(case, alpha):
    scores, image, _, rows = case
    close(hgai_scores(scores, image, rows, alpha), oracle.hgai(scores, image, rows, alpha))


@SETTINGS
@given(case=score_cases(queries=1), keep=st.floats(0.01, 1.0))
def test_spin_head_keep_matches_the_oracle(case, keep):
    scores, image, _, _ = case
    last = scores[:, :, -1, :]
    gates = oracle.spin_gates(last, image)
    count = int(keep * last.shape[1])
    for row in gates:  # a tie at the cut is broken by torch.topk, the code's own choice: leave those out
        ranked = sorted(row, reverse=True)
        assume(count in (0, len(row)) or ranked[count - 1] - ranked[count] > 1e-6)
    got = spin_head_keep(last, image, keep)
    assert torch.equal(got, oracle.spin_keep(last, image, keep))
    assert (got.sum(-1) == count).all()


def test_spin_count_truncates_like_the_code():
    scores, image = torch.randn(1, 32, 5), torch.ones(1, 5, dtype=torch.bool)
    assert [int(spin_head_keep(scores, image, keep).sum()) for keep in (0.8, 0.95, 1.0, 0.01)] == [25, 30, 32, 0]


def test_spin_with_equal_heads_keeps_a_count_not_nan():
    got = spin_head_keep(torch.zeros(2, 4, 3), torch.ones(2, 3, dtype=torch.bool), 0.5)
    assert (got.sum(-1) == 2).all()


# ---- the layer rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_layers", [1, 2, 3, 6, 12, 24, 28, 32, 40, 80])
@pytest.mark.parametrize("published", [(9, 15), (5, 19), (0, 32), (2, 3), (31, 32)])
def test_scaled_layers_is_the_overlap_rule(n_layers, published):
    got = scaled_layers(*published, n_layers)
    assert got == oracle.scaled_layers(*published, n_layers)
    assert len(got) >= 1
    if n_layers == 32:
        assert got == tuple(range(*published))


def test_defaults_give_layers_on_six_layers():
    assert VAF().layers_for(6) == (1, 2)
    assert HGAI().layers_for(6) == (0, 1, 2, 3)
    assert SPIN().layers_for(6) == tuple(range(6))
    assert VAF().layers_for(32) == tuple(range(9, 15))
    assert HGAI().layers_for(32) == tuple(range(5, 19))


# ---- end to end: the interventions against oracle hook functions ------------------------------


def oracle_stack(method, n_layers: int) -> list:
    layers = method.layers_for(n_layers)
    if isinstance(method, VAF):
        fn = oracle.vaf_hook(method.alpha, method.beta)
        return [(f"blocks.{layer}.attn.hook_attn_scores", fn) for layer in layers]
    if isinstance(method, HGAI):
        fn = oracle.hgai_hook(method.alpha)
        return [(f"blocks.{layer}.attn.hook_attn_scores", fn) for layer in layers]
    return oracle.spin_hooks(layers, method.keep, method.alpha)


METHODS = {
    "vaf": lambda: VAF(),
    "vaf_strong": lambda: VAF(alpha=0.5, beta=0.3, layers=[0, 3, 5]),
    "spin": lambda: SPIN(),
    "spin_zero": lambda: SPIN(keep=0.5, alpha=None, layers=[1, 4]),
    "hgai": lambda: HGAI(),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", list(METHODS))
def test_intervention_equals_oracle_hooks(name, case):
    runner, inputs = runner_for(name), demo_inputs(name)
    method = METHODS[case]()
    n_layers = runner.loaded.n_layers
    plain = runner.forward(inputs, []).logits
    got = runner.forward(inputs, [method]).logits
    want = runner.forward(inputs, oracle_stack(method, n_layers)).logits
    assert (got - plain).abs().max() > 1e-4, f"{case} changed nothing on {name}"
    assert_logits_close(got, want, TOLERANCE, f"{name} {case} prefill")

    got = runner.generate(inputs, [method], max_new_tokens=STEPS)
    want = runner.generate(inputs, oracle_stack(method, n_layers), max_new_tokens=STEPS)
    plain = runner.generate(inputs, [], max_new_tokens=STEPS)
    assert got.tokens == want.tokens
    assert_logits_close(got.step_logits, want.step_logits, TOLERANCE, f"{name} {case} decoding")
    assert (got.step_logits - plain.step_logits).abs().max() > 1e-4


def test_spin_leaves_no_state_between_runs():
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    first = runner.forward(inputs, [SPIN()])
    assert not any(first.ctx.scratch.get("_spin_heads", {}).values())
    again = runner.forward(inputs, [SPIN()]).logits
    assert torch.equal(first.logits, again)


# ---- the rows route ---------------------------------------------------------------------------


@cache
def rows_runner(name: str):
    from sinklens import load
    from sinklens.backends.nnsight_backend import NnsightRunner

    return NnsightRunner(load(name, attention="rows"))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", ["vaf", "spin", "hgai"])
def test_rows_route_equals_the_oracle(name, case):
    """On the rows route (sdpa plus the rows a stack acts on), each method equals the oracle hooks on eager."""
    eager, rows, inputs = runner_for(name), rows_runner(name), demo_inputs(name)
    method = METHODS[case]()
    want = eager.generate(inputs, oracle_stack(method, eager.loaded.n_layers), max_new_tokens=STEPS)
    got = rows.generate(inputs, [method], max_new_tokens=STEPS)
    assert got.tokens == want.tokens
    assert_logits_close(got.step_logits, want.step_logits, TOLERANCE, f"{name} {case} rows route")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("case", ["vaf", "spin", "hgai"])
def test_a_batch_gives_each_prompt_its_run_alone(name, case):
    """A left-padded batch of two prompts of different lengths: each prompt's logits as alone, over the steps."""
    from sinklens.builtin import demo_scene

    lm, runner = loaded(name), runner_for(name)
    examples = [(demo_scene(name), QUESTION), (demo_scene(name), "is there a red circle in the image ? answer yes .")]
    batch = runner.generate(lm.prepare_batch(examples), [METHODS[case]()], max_new_tokens=STEPS)
    for row, (image, question) in enumerate(examples):
        alone = runner.generate(lm.prepare(image, question), [METHODS[case]()], max_new_tokens=STEPS)
        assert batch.tokens[row] == alone.tokens[0]
        assert_logits_close(batch.step_logits[row : row + 1], alone.step_logits, TOLERANCE, f"{name} {case} row {row}")


# ---- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: VAF(alpha=-0.1), "alpha must be >= 0"),
        (lambda: VAF(beta=1.5), "beta must be in [0, 1]"),
        (lambda: VAF(alpha="0.5"), "without quotes"),
        (lambda: SPIN(keep=0.0), "keep must be in (0, 1]"),
        (lambda: SPIN(keep=1.2), "0.95 for captions"),
        (lambda: SPIN(alpha=-0.1), "alpha must be in [0, 1]"),
        (lambda: HGAI(alpha=-1), "alpha must be >= 0"),
        (lambda: scaled_layers(5, 5, 6), "stop must be an integer in [6, 32]"),
    ],
)
def test_bad_parameters_name_the_fix(make, message):
    with pytest.raises(ParameterError) as error:
        make()
    assert message in str(error.value)


def test_layers_past_the_model_are_refused():
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    with pytest.raises(LayerError, match="layers 0..5"):
        runner.forward(inputs, [HGAI(layers=[9])])


# ---- shared image prefixes: prefix_safe is honest ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", ["vaf", "spin", "hgai"])
def test_shared_prefixes_give_the_whole_run(case):
    """A left-padded batch, six questions on one image and one on another: sharing the two image prefixes gives
    every prompt its whole run (the prefix pass edits nothing; SPIN and HGAI find each prompt's last row)."""
    from sinklens.builtin import demo_scene
    from sinklens.data.scenes import scene
    from sinklens.run import PrefixStore

    assert METHODS[case]().prefix_safe
    questions = ["What is in the image?", "what colour ?", "is there a red circle ? answer yes or no .", "where ?",
                 "describe the picture .", "how many things are there ?"]  # fmt: skip
    name = "tiny-llava"
    runner, lm = runner_for(name), runner_for(name).loaded
    examples = [(demo_scene(name), q) for q in questions] + [(scene("heldout", 3).image(), questions[2])]
    whole = runner.generate(lm.prepare_batch(examples), [METHODS[case]()], max_new_tokens=STEPS)
    store = PrefixStore.for_stack([METHODS[case]()])
    shared = runner.generate(lm.prepare_batch(examples), [METHODS[case]()], max_new_tokens=STEPS, prefixes=store)
    assert shared.sharing.shared and (shared.sharing.prompts, shared.sharing.computed) == (7, 2)
    assert_logits_close(shared.step_logits, whole.step_logits, TOLERANCE, f"{case} shared prefixes")
    assert shared.tokens == whole.tokens
