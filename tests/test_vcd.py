"""VCD, alone and with VAR in either or both passes, against a hand-written two-pass decoding loop.

The oracle decodes greedily with two separate HF models (or one, twice) and
their own KV caches: one pass with the image, one with the noised image,
combined by the loop oracle of oracles_peers.py, with EOS barred from the
choice as min_new_tokens does. The runners run both passes in one batch.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

from sinklens import VAR, VCD, FindSinks, OnPass, expand_inputs
from sinklens.builtin.tiny_llava import TINY_SINK_DIM, build_tiny_llava

import oracle_var
import oracles_peers
from conftest import QUESTION, assert_logits_close

STEPS = 8
TOLERANCE = 1e-5
# beta above VCD's 0.1: the random tiny model's next-token distribution is flat, and the cut-off must act
ALPHA, BETA, NOISE_STEP, SEED = 1.0, 0.5, 500, 0


def prompt():
    from sinklens.models import load
    from sinklens.builtin.tiny_llava import draw_scene

    return load("tiny-llava").prepare(draw_scene(), QUESTION)


def oracle_pixels(pixels: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(SEED))
    return oracles_peers.diffusion_noise(pixels, noise, NOISE_STEP).float()


def pass_model(inputs, with_var: bool):
    model, _ = build_tiny_llava()
    if with_var:
        n_layers = model.config.text_config.num_hidden_layers
        oracle = oracle_var.OracleVAR.for_prompt(
            inputs, model.config.image_token_id, dims=(TINY_SINK_DIM,), layers=tuple(range(2, n_layers - 1))
        )
        oracle_var.install(model, oracle)
    return model


@cache
def oracle_decoding(var_in: frozenset[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefill logits, step logits) of VCD decoding with VAR in the passes named in `var_in`."""
    inputs = prompt()
    passes = {
        "image": (pass_model(inputs, "image" in var_in), inputs["pixel_values"]),
        "noised": (pass_model(inputs, "noised" in var_in), oracle_pixels(inputs["pixel_values"])),
    }
    eos = 2
    caches, logits, steps = {}, {}, []
    with torch.no_grad():
        for name, (model, pixels) in passes.items():
            out = model(**{**inputs, "pixel_values": pixels}, use_cache=True)
            caches[name], logits[name] = out.past_key_values, out.logits
        prefill = oracles_peers.contrastive_logits(logits["image"], logits["noised"], ALPHA, BETA).float()
        length = inputs["input_ids"].shape[1]
        for _ in range(STEPS):
            combined = oracles_peers.contrastive_logits(logits["image"][:, -1], logits["noised"][:, -1], ALPHA, BETA)
            steps.append(combined.float())
            combined[:, eos] = float("-inf")
            token = combined.argmax(-1, keepdim=True)
            length += 1
            for name, (model, _) in passes.items():
                out = model(
                    input_ids=token, attention_mask=torch.ones(1, length, dtype=torch.long),
                    past_key_values=caches[name], use_cache=True,
                )
                caches[name], logits[name] = out.past_key_values, out.logits
    return prefill, torch.stack(steps, dim=1)


CASES = {
    "vcd": (lambda: [VCD(beta=BETA)], frozenset()),
    "vcd+var-both": (lambda: [FindSinks(), VAR(), VCD(beta=BETA)], frozenset({"image", "noised"})),
    "vcd+var-image": (lambda: [FindSinks(), OnPass("image", VAR()), VCD(beta=BETA)], frozenset({"image"})),
    "vcd+var-noised": (lambda: [FindSinks(), OnPass("noised", VAR()), VCD(beta=BETA)], frozenset({"noised"})),
}


@pytest.mark.parametrize("case", list(CASES))
def test_vcd_matches_the_two_pass_oracle(any_runner, inputs, case):
    make, var_in = CASES[case]
    expected_prefill, expected_steps = oracle_decoding(var_in)
    forward = any_runner.forward(inputs, make())
    assert forward.logits.shape[0] == 1, "results are for the user's prompt, not the doubled batch"
    assert_logits_close(forward.logits, expected_prefill, TOLERANCE, "prefill")
    generation = any_runner.generate(inputs, make(), max_new_tokens=STEPS)
    for step in range(STEPS):
        assert_logits_close(generation.step_logits[:, step], expected_steps[:, step], TOLERANCE, f"step {step}")
    assert torch.isneginf(generation.step_logits).any(), "the plausibility cut-off must act on this prompt"


def test_var_in_one_pass_differs_from_var_in_both(runner, inputs):
    both = runner.forward(inputs, CASES["vcd+var-both"][0]()).logits
    image_only = runner.forward(inputs, CASES["vcd+var-image"][0]()).logits
    finite = torch.isfinite(both) & torch.isfinite(image_only)
    assert (both[finite] - image_only[finite]).abs().max() > 1e-4


def test_expand_inputs_appends_a_noised_copy_of_each_prompt(inputs):
    expanded = expand_inputs([FindSinks(), VCD(beta=BETA)], inputs)
    assert torch.equal(expanded["input_ids"], torch.cat([inputs["input_ids"]] * 2))
    assert torch.equal(expanded["attention_mask"], torch.cat([inputs["attention_mask"]] * 2))
    assert torch.equal(expanded["pixel_values"][:1], inputs["pixel_values"])
    torch.testing.assert_close(expanded["pixel_values"][1:], oracle_pixels(inputs["pixel_values"]), atol=1e-6, rtol=0)
    assert expand_inputs([FindSinks(), VAR()], inputs).keys() == inputs.keys()


def test_each_pass_finds_its_own_sinks(runner, inputs):
    ctx = runner.forward(inputs, [FindSinks(), VCD(beta=BETA)]).ctx
    assert ctx.passes == {"image": slice(0, 1), "noised": slice(1, 2)}
    assert ctx.sinks[2].shape[0] == 2
    image = ctx.image.mask[0]
    # the noised image gives its image tokens other residuals, so other sink values
    assert (ctx.phi[2][0, image] - ctx.phi[2][1, image]).abs().max() > 1e-2
    first_image = int(image.nonzero()[0])
    # tokens before the image cannot see it (causal attention): the same in both passes
    assert torch.equal(ctx.phi[2][0, :first_image], ctx.phi[2][1, :first_image])


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-internvl"])
def test_a_prompts_noised_image_does_not_depend_on_its_batch_mates(name):
    """VCD draws each image's noise afresh: a prompt's VCD logits are those it gets alone."""
    from conftest import loaded, runner_for
    from sinklens.builtin import demo_scene

    lm = loaded(name)
    scene = demo_scene(name)
    other = scene.resize((scene.width * 2, scene.height))  # another shape: other tiles, grids, padding
    stack = lambda: [FindSinks(), VCD(beta=BETA)]  # noqa: E731
    alone = runner_for(name).forward(lm.prepare(scene, QUESTION), stack()).logits
    batch = lm.prepare_batch([(other, "Is there a square?"), (scene, QUESTION)])
    together = runner_for(name).forward(batch, stack()).logits
    assert_logits_close(together[1:, -1], alone[:, -1], TOLERANCE, f"{name}: VCD logits of the second prompt")
