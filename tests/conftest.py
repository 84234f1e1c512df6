"""Shared fixtures: tiny models of the real transformers classes, built offline."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from sinklens.models import load
from sinklens.builtin.records import BUILTIN_MODELS
from sinklens.builtin import demo_scene
from sinklens.builtin.tiny_llava import draw_scene

QUESTION = "What is in the image?"


def pytest_configure(config):
    config.addinivalue_line("markers", "study: a study script of studies/ run in --smoke mode on toy-llava (part of every run)")
    config.addinivalue_line("markers", "slow: minutes of CPU (the README's blocks); part of every run, `-m 'not slow'` skips them")


# Every tiny checkpoint the tests use: the planted built-ins, each with the visual sinks its demo
# scene makes (`BuiltIn.visual_sinks`), from their records in sinklens/builtin/records.py.
ARCHS = {record.name: record for record in BUILTIN_MODELS if record.planted}
NEW_ARCHS = [name for name in ARCHS if name != "tiny-llava"]


@cache
def loaded(name: str):
    """A built-in, loaded once per session."""
    return load(name)


@cache
def runner_for(name: str):
    from sinklens.backends.nnsight_backend import NnsightRunner

    return NnsightRunner(loaded(name))


@cache
def demo_inputs(name: str):
    return loaded(name).prepare(demo_scene(name), QUESTION)


@pytest.fixture(scope="session")
def tiny():
    """tiny-llava with planted sinks (BOS and the two white patches of draw_scene)."""
    return loaded("tiny-llava")


@pytest.fixture(scope="session")
def scene():
    return draw_scene()


@pytest.fixture(scope="session")
def inputs(tiny, scene):
    return tiny.prepare(scene, QUESTION)


@pytest.fixture(scope="session")
def runner(tiny):
    return runner_for("tiny-llava")


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def assert_records_close(a, b, where: str, atol: float) -> None:
    """Two runs' records: plain data of the same structure and types, tensors within `atol`."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert sorted(a, key=str) == sorted(b, key=str), f"{where}: keys"
        for key in a:
            assert_records_close(a[key], b[key], f"{where}[{key!r}]", atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length"
        for index, (x, y) in enumerate(zip(a, b)):
            assert_records_close(x, y, f"{where}[{index}]", atol)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ---- both backends ----------------------------------------------------------------------------

# Models the backend-equivalence tests run on (tests/test_transformer_lens_backend.py).
# A trained model joins with one more name here, once sinklens.load knows it.
EQUIVALENCE_MODELS = ["tiny-llava", "toy-llava"]


@pytest.fixture(scope="session")
def tl_runner(tiny):
    """tiny-llava through a TransformerBridge built on its own copy of the weights."""
    from sinklens.backends.transformer_lens_backend import TransformerLensRunner

    return TransformerLensRunner(tiny)


@pytest.fixture(params=["nnsight", "transformer_lens"])
def any_runner(request, runner, tl_runner):
    """Each backend's runner on tiny-llava, in turn."""
    return runner if request.param == "nnsight" else tl_runner


@pytest.fixture(scope="session", params=EQUIVALENCE_MODELS)
def model_case(request, scene):
    """(loaded model, inputs, nnsight runner, TransformerLens runner) for each equivalence model."""
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.backends.transformer_lens_backend import TransformerLensRunner

    if request.param == "tiny-llava":
        loaded, nnsight_runner = request.getfixturevalue("tiny"), request.getfixturevalue("runner")
        tl = request.getfixturevalue("tl_runner")
    else:
        loaded = load(request.param)
        nnsight_runner, tl = NnsightRunner(loaded), TransformerLensRunner(loaded)
    return loaded, loaded.prepare(scene, QUESTION), nnsight_runner, tl


def assert_logits_close(a: torch.Tensor, b: torch.Tensor, tolerance: float, what: str = "logits") -> float:
    """Same -inf entries (VCD's cut-off), and finite entries within `tolerance`; returns the max diff."""
    assert torch.equal(torch.isneginf(a), torch.isneginf(b)), f"{what}: the -inf entries differ"
    finite = torch.isfinite(a)
    diff = max_diff(a[finite], b[finite]) if finite.any() else 0.0
    assert diff <= tolerance, f"{what}: max abs diff {diff} > {tolerance}"
    return diff


def assert_steps_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float, what: str = "") -> float:
    """`[batch, step, vocab]` step logits, each decoding step checked on its own; returns the largest diff."""
    assert actual.shape == expected.shape, f"step logits{what}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diffs = [assert_logits_close(actual[:, step], expected[:, step], tolerance, f"decoding step {step}{what}")
             for step in range(actual.shape[1])]  # fmt: skip
    return max(diffs, default=0.0)


@pytest.fixture(scope="session")
def toy():
    """toy-llava: SmolLM2 + DINOv2 with the shipped projector (real weights from pip packages)."""
    return load("toy-llava")


@pytest.fixture(scope="session")
def toy_runner(toy):
    from sinklens.backends.nnsight_backend import NnsightRunner

    return NnsightRunner(toy)


# the 2026 families (issue 25): make test-fast keeps their layouts, semantics, catalogue, CLI and sink-dimension
# tests; their batch and oracle parametrizations (the heaviest of the fast set) run in make test only
FAMILIES_2026 = {"tiny-llava-onevision", "tiny-qwen3-vl", "tiny-gemma3", "tiny-smolvlm", "tiny-mistral3"}
HEAVY_FOR_FAST = {"test_batch.py", "test_var_nnsight.py"}


def pytest_collection_modifyitems(items):
    """Mark `slow` every test that runs toy-llava (its fixtures, or a "toy-llava" parameter), and the 2026 families'
    batch and oracle parametrizations: make test-fast skips them."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        parameters = [str(value) for value in callspec.params.values()] if callspec else []
        heavy_family = item.path.name in HEAVY_FOR_FAST and FAMILIES_2026 & set(parameters)
        if {"toy", "toy_runner"} & set(item.fixturenames) or "toy-llava" in parameters or heavy_family:
            item.add_marker(pytest.mark.slow)
