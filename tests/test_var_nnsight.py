"""VAR through nnsight equals an independent oracle, in prefill and at every decoding step."""

from __future__ import annotations

import pytest
import torch

from sinklens import VAR, FindSinks
from sinklens.backends.nnsight_backend import attach, make_context
from sinklens.models.tiny import TINY_SINK_DIM, build_tiny_llava

from conftest import max_diff
from oracle_var import OracleVAR, install

STEPS = 8
TOLERANCE = 1e-5


def oracle_model(inputs, convention: str, **var_params):
    """A second tiny-llava, identical weights, running the oracle attention."""
    model, _ = build_tiny_llava()
    n_layers = model.config.text_config.num_hidden_layers
    last = n_layers - 1 if convention == "paper" else n_layers
    image_positions = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten().tolist()
    oracle = OracleVAR(
        dims=(TINY_SINK_DIM,), image_positions=image_positions, convention=convention,
        layers=tuple(range(2, last)), **var_params,
    )
    install(model, oracle)
    return model, oracle


def oracle_generation(inputs, convention: str, **var_params):
    model, oracle = oracle_model(inputs, convention, **var_params)
    with torch.no_grad():
        prefill = model(**inputs).logits
        oracle.sinks.clear()
        out = model.generate(
            **inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
            output_logits=True, return_dict_in_generate=True, pad_token_id=3,
        )
    return prefill, torch.stack(out.logits, dim=1), oracle


@pytest.mark.parametrize("convention", ["paper", "released"])
@pytest.mark.parametrize("params", [{}, {"p": 0.9, "rho": 0.5, "summ": 0.1}])
def test_var_matches_oracle_in_prefill_and_decoding(runner, inputs, convention, params):
    stack = [FindSinks(convention=convention), VAR(convention=convention, **params)]
    forward = runner.forward(inputs, stack)
    generation = runner.generate(inputs, stack, max_new_tokens=STEPS)
    oracle_prefill, oracle_steps, oracle = oracle_generation(inputs, convention, **params)

    assert oracle.n_selected > 0, "the planted case must select image-centric heads"
    assert sorted(forward.ctx.sinks) == list(range(6))
    assert forward.ctx.sinks[2][0].nonzero().flatten().tolist() == oracle.sinks[2]
    assert max_diff(forward.logits, oracle_prefill) <= TOLERANCE
    for step in range(STEPS):
        diff = max_diff(generation.step_logits[:, step], oracle_steps[:, step])
        assert diff <= TOLERANCE, f"decoding step {step}: max abs diff {diff}"


def test_var_changes_the_answer_on_the_planted_scene(runner, inputs):
    base = runner.generate(inputs, max_new_tokens=STEPS)
    var = runner.generate(inputs, [FindSinks(), VAR()], max_new_tokens=STEPS)
    assert base.tokens != var.tokens


def test_no_var_equals_plain_hf_generate(runner, tiny, inputs):
    generation = runner.generate(inputs, max_new_tokens=STEPS)
    with torch.no_grad():
        out = tiny.model.generate(
            **inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
            output_logits=True, return_dict_in_generate=True, pad_token_id=3,
        )
    torch.testing.assert_close(generation.step_logits, torch.stack(out.logits, dim=1), rtol=0, atol=0)


@pytest.mark.parametrize(
    "stack",
    [
        pytest.param([FindSinks(), VAR(p=0.0)], id="p=0"),
        pytest.param([FindSinks(tau=1000.0), VAR()], id="tau-above-every-phi"),
    ],
)
def test_identity_cases_equal_the_unmodified_model_exactly(runner, inputs, stack):
    plain = runner.generate(inputs, max_new_tokens=STEPS)
    edited = runner.generate(inputs, stack, max_new_tokens=STEPS)
    assert torch.equal(plain.step_logits, edited.step_logits)
    assert torch.equal(runner.forward(inputs).logits, runner.forward(inputs, stack).logits)


def test_attach_inside_a_users_own_trace(runner, tiny, inputs):
    model = runner.model
    ctx = make_context(tiny, inputs)
    with torch.no_grad(), model.trace(**inputs):
        attach(model, tiny, [FindSinks(), VAR()], inputs, ctx=ctx)
        logits = model.output.logits.save()
    torch.testing.assert_close(logits, runner.forward(inputs, [FindSinks(), VAR()]).logits, rtol=0, atol=0)
    assert [record["layer"] for record in ctx.records["var"]] == [2, 3, 4]


def test_var_records_every_layer_at_every_step(runner, inputs):
    generation = runner.generate(inputs, [FindSinks(), VAR()], max_new_tokens=STEPS)
    seen = {(record["layer"], record["step"]) for record in generation.ctx.records["var"]}
    assert seen == {(layer, step) for layer in (2, 3, 4) for step in range(STEPS)}


def test_sinks_are_bos_and_the_white_patches(runner, tiny, inputs):
    ctx = runner.forward(inputs, [FindSinks()]).ctx
    image = ctx.image.mask[0].nonzero().flatten().tolist()
    for layer, sinks in ctx.sinks.items():
        found = sinks[0].nonzero().flatten().tolist()
        assert found == [0, image[0], image[14]], f"layer {layer}"
