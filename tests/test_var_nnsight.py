"""VAR through nnsight equals an independent oracle, in prefill and at every decoding step, on every architecture."""

from __future__ import annotations

import pytest
import torch

from sinklens import VAR, FindSinks
from sinklens.backends.nnsight_backend import attach, make_context
from sinklens.builtin import BUILTINS
from sinklens.builtin.tiny_llava import TINY_SINK_DIM

from conftest import ARCHS, assert_steps_close, demo_inputs, loaded, max_diff, runner_for
from oracle_var import OracleVAR, install

STEPS = 8
TOLERANCE = 1e-5


def oracle_generation(name, inputs, convention: str, **var_params):
    """A second copy of the built-in, identical weights, running the oracle attention: prefill and decoding."""
    model, processor = BUILTINS[name]()
    n_layers = model.config.text_config.num_hidden_layers
    last = n_layers - 1 if convention == "paper" else n_layers
    oracle = OracleVAR(
        dims=(TINY_SINK_DIM,), input_ids=inputs["input_ids"].tolist(),
        attention_mask=inputs["attention_mask"].tolist(), image_token_id=model.config.image_token_id,
        convention=convention, layers=tuple(range(2, last)), **var_params,
    )
    install(model, oracle)
    with torch.no_grad():
        prefill = model(**inputs).logits
        oracle.sinks.clear()
        out = model.generate(
            **inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
            output_logits=True, return_dict_in_generate=True, pad_token_id=processor.tokenizer.pad_token_id,
        )
    return prefill, torch.stack(out.logits, dim=1), oracle


def assert_matches_oracle(name, inputs, stack, convention, params):
    """VAR through nnsight against the oracle on the same inputs; returns the max diffs (prefill, decoding)."""
    runner = runner_for(name)
    forward = runner.forward(inputs, stack)
    generation = runner.generate(inputs, stack, max_new_tokens=STEPS)
    oracle_prefill, oracle_steps, oracle = oracle_generation(name, inputs, convention, **params)

    assert oracle.n_selected > 0, "the planted case must select image-centric heads"
    assert oracle.image_positions == [row.nonzero().flatten().tolist() for row in forward.ctx.image.mask]
    for b in range(inputs["input_ids"].shape[0]):
        assert forward.ctx.sinks[2][b].nonzero().flatten().tolist() == oracle.sinks[2][b]
    prefill = max_diff(forward.logits, oracle_prefill)
    assert prefill <= TOLERANCE, f"prefill: max abs diff {prefill}"
    decoding = assert_steps_close(generation.step_logits, oracle_steps, TOLERANCE)
    return prefill, decoding


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize("convention", ["paper", "released"])
@pytest.mark.parametrize("params", [{}, {"p": 0.9, "rho": 0.5, "summ": 0.1}])
def test_var_matches_oracle_in_prefill_and_decoding(name, convention, params):
    stack = [FindSinks(convention=convention), VAR(convention=convention, **params)]
    inputs = demo_inputs(name)
    assert_matches_oracle(name, inputs, stack, convention, params)
    assert sorted(runner_for(name).forward(inputs, stack).ctx.sinks) == list(range(6))


def test_var_changes_the_answer_on_the_planted_scene(runner, inputs):
    base = runner.generate(inputs, max_new_tokens=STEPS)
    var = runner.generate(inputs, [FindSinks(), VAR()], max_new_tokens=STEPS)
    assert base.tokens != var.tokens


@pytest.mark.parametrize("name", list(ARCHS))
def test_var_changes_the_logits(name):
    runner, inputs = runner_for(name), demo_inputs(name)
    base = runner.generate(inputs, max_new_tokens=STEPS)
    var = runner.generate(inputs, [FindSinks(), VAR()], max_new_tokens=STEPS)
    assert max_diff(base.step_logits, var.step_logits) > 1e-3


@pytest.mark.parametrize("name", list(ARCHS))
def test_no_var_equals_plain_hf_generate(name):
    lm, runner, inputs = loaded(name), runner_for(name), demo_inputs(name)
    generation = runner.generate(inputs, max_new_tokens=STEPS)
    with torch.no_grad():
        out = lm.model.generate(
            **inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
            output_logits=True, return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id,
        )
    torch.testing.assert_close(generation.step_logits, torch.stack(out.logits, dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(ARCHS))
@pytest.mark.parametrize(
    "stack",
    [
        pytest.param([FindSinks(), VAR(p=0.0)], id="p=0"),
        # dimension 0 carries no massive activation: no token reaches tau, so VAR has nothing to move
        pytest.param([FindSinks(dims=[0]), VAR()], id="no-sink-found"),
    ],
)
def test_identity_cases_equal_the_unmodified_model_exactly(name, stack):
    runner, inputs = runner_for(name), demo_inputs(name)
    plain = runner.generate(inputs, max_new_tokens=STEPS)
    edited = runner.generate(inputs, stack, max_new_tokens=STEPS)
    assert torch.equal(plain.step_logits, edited.step_logits)
    assert torch.equal(runner.forward(inputs).logits, runner.forward(inputs, stack).logits)


@pytest.mark.parametrize("name", list(ARCHS))
def test_attach_inside_a_users_own_trace(name):
    lm, runner, inputs = loaded(name), runner_for(name), demo_inputs(name)
    model = runner.model
    ctx = make_context(lm, inputs)
    with torch.no_grad(), model.trace(**inputs):
        attach(model, lm, [FindSinks(), VAR()], inputs, ctx=ctx)
        logits = model.output.logits.save()
    torch.testing.assert_close(logits, runner.forward(inputs, [FindSinks(), VAR()]).logits, rtol=0, atol=0)
    assert [record["layer"] for record in ctx.records["var"]] == [2, 3, 4]


@pytest.mark.parametrize("name", list(ARCHS))
def test_var_records_every_layer_at_every_step(name):
    generation = runner_for(name).generate(demo_inputs(name), [FindSinks(), VAR()], max_new_tokens=STEPS)
    seen = {(record["layer"], record["step"]) for record in generation.ctx.records["var"]}
    assert seen == {(layer, step) for layer in (2, 3, 4) for step in range(STEPS)}


@pytest.mark.parametrize("name", list(ARCHS))
def test_sinks_are_bos_and_the_white_blocks(name):
    """The planted sinks land where the grid says the white blocks are: checks the grid rule end to end."""
    ctx = runner_for(name).forward(demo_inputs(name), [FindSinks()]).ctx
    (image,) = ctx.image.images
    tiles = {tile.name: tile for tile in image.tiles}
    expected = sorted([0] + [int(tiles[tile].positions[row, col]) for tile, row, col in ARCHS[name].visual_sinks])
    for layer, sinks in ctx.sinks.items():
        assert sinks[0].nonzero().flatten().tolist() == expected, f"layer {layer}"


def test_an_unreachable_tau_is_refused_with_the_ceiling():
    from sinklens.errors import ParameterError

    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    with pytest.raises(ParameterError, match=r"at most sqrt\(d_model\) = 22.6"):
        runner.forward(inputs, [FindSinks(tau=1000.0), VAR()])
    with pytest.raises(ParameterError, match="not both"):
        FindSinks(tau=10.0, tau_fraction=0.5)
    with pytest.raises(ParameterError, match="tau_fraction must be < 1"):
        FindSinks(tau_fraction=1.0)


def test_tau_fraction_is_relative_to_the_width():
    lm, runner, inputs = loaded("tiny-llava"), runner_for("tiny-llava"), demo_inputs("tiny-llava")
    relative = runner.forward(inputs, [FindSinks(tau_fraction=15 / lm.d_model**0.5)]).ctx
    absolute = runner.forward(inputs, [FindSinks(tau=15.0)]).ctx
    assert all(torch.equal(relative.sinks[layer], absolute.sinks[layer]) for layer in absolute.sinks)
