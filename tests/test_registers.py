"""Test-time registers: the neurons found from data, and the edit against plain PyTorch hooks on the HF model."""

from __future__ import annotations

from functools import cache

import pytest
import torch

import sinklens as sl
from sinklens.builtin.tiny_llava import draw_scene, plant_vision_sinks
from sinklens.errors import ParameterError
from sinklens.interventions.registers import TestTimeRegisters, find_register_neurons

from conftest import assert_logits_close, demo_inputs, loaded, runner_for
from test_vision_points import tower_layers

STEPS = 3


@cache
def planted():
    """tiny-llava whose tower writes high-norm tokens on bright patches through MLP neuron 0 of layer 0."""
    lm = sl.load("tiny-llava")
    plant_vision_sinks(lm.model)
    return lm, sl.NnsightRunner(lm)


def bright_scenes(lm, k: int = 4):
    return [lm.prepare(draw_scene(white_patches=(i, 20 + i)), "what is in the image?") for i in range(k)]


def oracle_neurons(lm, inputs, threshold: float, top_k: int):
    """Mean |MLP activation| at the outlier tokens, per (layer, neuron), with plain PyTorch hooks and loops."""
    layers = tower_layers(lm.model, lm.n_vision_layers)
    sums = torch.zeros(len(layers), layers[0].mlp.fc2.in_features, dtype=torch.float64)
    count = 0
    for prompt in inputs:
        acts, last = {}, {}
        handles = [layer.mlp.fc2.register_forward_pre_hook(lambda m, a, i=i: acts.__setitem__(i, a[0].double()))
                   for i, layer in enumerate(layers)]  # fmt: skip
        handles.append(layers[-1].register_forward_hook(lambda m, a, out: last.__setitem__("out", out.double())))
        with torch.no_grad():
            lm.model(**prompt)
        for handle in handles:
            handle.remove()
        rows, tokens, _ = last["out"].shape
        for r in range(rows):
            for t in range(tokens):
                if float(last["out"][r, t].norm()) > threshold:
                    count += 1
                    for i in range(len(layers)):
                        sums[i] += acts[i][r, t].abs()
    mean = (sums / count).flatten()
    order = sorted(range(mean.numel()), key=lambda j: -float(mean[j]))[:top_k]
    return tuple((j // sums.shape[1], j % sums.shape[1]) for j in order)


def test_the_planted_register_neuron_is_found_first_and_as_the_oracle_ranks():
    lm, runner = planted()
    inputs = bright_scenes(lm)
    found = find_register_neurons(runner, inputs, threshold=40.0, top_k=5)
    assert found[0] == (0, 0)  # the neuron plant_vision_sinks writes the high norms with
    assert found == oracle_neurons(lm, inputs, 40.0, 5)


def test_registers_take_the_high_norms_off_the_patches():
    lm, runner = planted()
    inputs = demo_inputs("tiny-llava")
    before = runner.forward(inputs, [sl.FindVisionSinks()]).ctx.records["vision_sinks"]
    assert before[1][0, 1:].any()  # high-norm patches without registers
    after = runner.forward(inputs, [TestTimeRegisters(neurons=[(0, 0)]), sl.FindVisionSinks()]).ctx.records
    assert after["vision_sinks"][1].shape == (1, 38)  # the appended register is in the tower's sequence
    assert after["vision_sinks"][1][0].nonzero().flatten().tolist() == [37]  # and the only high-norm token


def plain_registers(lm, neurons, n: int, scale: float):
    """The same edit as plain PyTorch hooks on the HF modules (found by shape, not by the catalogue)."""
    layers = tower_layers(lm.model, lm.n_vision_layers)
    projector = next(m for p, m in lm.model.named_modules() if p.endswith(("multi_modal_projector", "connector")))

    def append(module, args, kwargs):
        hidden = args[0]
        return (torch.cat([hidden, hidden.new_zeros(hidden.shape[0], n, hidden.shape[-1])], 1), *args[1:]), kwargs

    def move(ids):
        def hook(module, args):
            hidden = args[0].clone()
            for j in ids:
                peak = hidden[:, :-n, j].max(dim=1).values
                hidden[:, -n:, j] = scale * peak[:, None]
                hidden[:, :-n, j] = 0
            return (hidden, *args[1:])
        return hook

    def drop(module, args):
        return (args[0][:, :-n], *args[1:])

    handles = [layers[0].register_forward_pre_hook(append, with_kwargs=True), projector.register_forward_pre_hook(drop)]
    for layer in sorted({l for l, _ in neurons}):
        handles.append(layers[layer].mlp.fc2.register_forward_pre_hook(move([j for l, j in neurons if l == layer])))
    return handles


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-llava-onevision", "tiny-gemma3"])
def test_registers_equal_plain_pytorch_hooks(name):
    lm, runner = (planted() if name == "tiny-llava" else (loaded(name), runner_for(name)))
    neurons, n, scale = [(0, 0), (0, 5), (1, 3)], 2, 1.5
    inputs = demo_inputs(name)
    got = runner.generate(inputs, [TestTimeRegisters(neurons=neurons, n_registers=n, scale=scale)], max_new_tokens=STEPS)
    plain = runner.generate(inputs, [], max_new_tokens=STEPS)
    handles = plain_registers(lm, neurons, n, scale)
    try:
        want = runner.generate(inputs, [], max_new_tokens=STEPS)
    finally:
        for handle in handles:
            handle.remove()
    assert (got.step_logits - plain.step_logits).abs().max() > 1e-4
    assert_logits_close(got.step_logits, want.step_logits, 1e-5, f"{name} registers")
    assert got.tokens == want.tokens


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-mistral3", "tiny-internvl", "tiny-smolvlm"])
def test_towers_that_cannot_take_tokens_are_refused_by_name(name):
    with pytest.raises(ParameterError, match="cannot take them"):
        runner_for(name).forward(demo_inputs(name), [TestTimeRegisters(neurons=[(0, 0)])])


def test_register_mistakes_are_named():
    lm, runner = planted()
    with pytest.raises(ParameterError, match="find_register_neurons"):
        TestTimeRegisters(neurons=[])
    with pytest.raises(ParameterError, match="run past the vision tower"):
        runner.forward(demo_inputs("tiny-llava"), [TestTimeRegisters(neurons=[(7, 0)])])
    with pytest.raises(ParameterError, match="no token of these images"):
        find_register_neurons(runner, bright_scenes(lm, 1), threshold=1e6)
    with pytest.raises(sl.SinklensError, match="to dimension 1|returned"):
        runner.forward(demo_inputs("tiny-llava"), [("vision.hook_out", lambda t, ctx: t[:, :-1])])  # no resizes=True
