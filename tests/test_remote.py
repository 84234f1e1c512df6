"""Remote execution: nnsight's local simulation gives the local logits; requests are small and self-contained.

`remote=True` needs NDIF and a key, which this machine has neither of: the
checks before a run are tested on local copies of NDIF's status data, and the
request itself through nnsight's `remote="local"` and `tests/ndif_emulation.py`
(a server without sinklens or jaxtyping).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sinklens as sl
from sinklens.backends.ndif import check_ready, hosted_models
from sinklens.testing import Payload, Simulation, referenced_modules
from sinklens.errors import RemoteError
from sinklens.interventions.scan import SinkDimensionScan

from conftest import assert_logits_close, assert_records_close, demo_inputs, runner_for

# every test here ships sinklens to nnsight's (simulated) server: a session without shape checks (conftest.py)
pytestmark = pytest.mark.ships

TOLERANCE = 1e-5
STEPS = 3
REMOTE_MODELS = ["tiny-llava", "toy-llava"]


def damp_first_key(pattern, ctx):  # a user's own hook function
    pattern[..., 0] *= 0.9
    return pattern


def scale_resid(resid, ctx):
    return resid * 1.01


# Every intervention the remote route must carry: one line each.
from sinklens.interventions.analysis import (  # noqa: E402
    AttentionContribution, AttentionMaps, HeadScores, RandomAblation, SinkAblation,
)

REMOTE_CASES = {
    "FindSinks": lambda: [sl.FindSinks()],
    "SinkDimensionScan": lambda: [SinkDimensionScan(layers=[1, 2], dims=[0, 3, 7])],
    "VAR": lambda: [sl.FindSinks(), sl.VAR()],
    "VAR-released": lambda: [sl.FindSinks(convention="released"), sl.VAR(convention="released", p=0.9, rho=0.5)],
    "PAI": lambda: [sl.PAI(alpha=0.5)],
    "VCD": lambda: [sl.VCD(alpha=1.0, beta=0.1)],
    "Edit": lambda: [sl.Edit(["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"], scale_resid)],
    "LogitsHook": lambda: [sl.LogitsHook(lambda logits, ctx: logits - logits.mean(-1, keepdim=True))],
    "SinkAblation": lambda: [sl.FindSinks(), SinkAblation(layers=[2, 3])],
    "RandomAblation": lambda: [sl.FindSinks(), RandomAblation(seed=0, layers=[2, 3])],
    "HeadScores": lambda: [sl.FindSinks(), HeadScores(layers=[2])],
    "AttentionMaps": lambda: [sl.FindSinks(), AttentionMaps(layers=[2])],
    "AttentionContribution": lambda: [AttentionContribution(layers=[1, 3])],  # W_O read on the server
    "Stack": lambda: sl.Stack(
        sl.FindSinks(), sl.PAI(alpha=0.3), sl.OnPass("image", sl.VAR()),
        ("blocks.3.attn.hook_pattern", damp_first_key), sl.VCD(alpha=0.5),
    ),
}


def _same_state(local, remote) -> None:
    assert sorted(local.sinks) == sorted(remote.sinks)
    for layer, mask in local.sinks.items():
        assert torch.equal(mask, remote.sinks[layer]), f"sinks at layer {layer}"
    assert sorted(local.records) == sorted(remote.records)
    if "scan" in local.records:
        for layer, values in local.records["scan"].items():
            torch.testing.assert_close(values, remote.records["scan"][layer], rtol=0, atol=0)
    assert local.records.get("var") == remote.records.get("var")
    for key in local.records:
        assert_records_close(local.records[key], remote.records[key], f"records[{key!r}]", TOLERANCE)


@pytest.mark.parametrize("name", REMOTE_MODELS)
@pytest.mark.parametrize("case", list(REMOTE_CASES))
def test_local_simulation_gives_the_local_logits(name, case):
    runner, inputs = runner_for(name), demo_inputs(name)
    stack = REMOTE_CASES[case]()
    local = runner.forward(inputs, stack)
    simulation = Simulation()  # nnsight's remote="local", measuring the request on the way
    remote = runner.forward(inputs, stack, remote=simulation)
    assert_logits_close(local.logits, remote.logits, TOLERANCE, f"{case} prefill")
    (payload,) = simulation.payloads
    assert payload.foreign == frozenset(), f"{case} names modules an NDIF server lacks: {sorted(payload.foreign)}"
    _same_state(local.ctx, remote.ctx)
    local_steps = runner.generate(inputs, stack, max_new_tokens=STEPS)
    remote_steps = runner.generate(inputs, stack, max_new_tokens=STEPS, remote="local")
    assert_logits_close(local_steps.step_logits, remote_steps.step_logits, TOLERANCE, f"{case} decoding")
    assert local_steps.tokens == remote_steps.tokens
    _same_state(local_steps.ctx, remote_steps.ctx)


def test_a_runner_made_remote_runs_every_call_remotely():
    """Studies call runner.forward / generate without remote=: a runner built with it gets it for free."""
    from sinklens.backends.nnsight_backend import NnsightRunner
    from conftest import loaded

    lm, inputs = loaded("tiny-llava"), demo_inputs("tiny-llava")
    simulation = Simulation()
    runner = NnsightRunner(lm, model=runner_for("tiny-llava").model, remote=simulation)
    runner.forward(inputs, [sl.FindSinks(), sl.VAR()])
    runner.generate(inputs, [sl.FindSinks(), sl.VAR()], max_new_tokens=2)
    assert len(simulation.payloads) == 2
    runner.forward(inputs, [sl.FindSinks()], remote=False)  # a call can still run here
    assert len(simulation.payloads) == 2


def _input_bytes(inputs, doubled: bool) -> int:
    total = sum(value.numel() * value.element_size() for value in inputs.values())
    return 2 * total if doubled else total


@pytest.mark.parametrize("name", REMOTE_MODELS)
@pytest.mark.parametrize("case", ["Stack", "AttentionContribution"])
def test_the_request_is_small_and_names_no_local_module(name, case):
    """No weights, no tensor larger than the inputs, and only packages an NDIF server has.

    AttentionContribution uses W_O: it must read it on the server, not ship it
    (one o_proj weight is larger than the image, so the largest-binary check catches it).
    """
    runner, inputs = runner_for(name), demo_inputs(name)
    simulation = Simulation(keep_bytes=True)
    runner.forward(inputs, REMOTE_CASES[case](), remote=simulation)
    runner.generate(inputs, REMOTE_CASES[case](), max_new_tokens=STEPS, remote=simulation)
    weights = sum(p.numel() * p.element_size() for p in runner.loaded.model.parameters())
    doubled = case == "Stack"  # VCD ships a noised copy of the image
    for payload in simulation.payloads:
        code = payload.size - _input_bytes(inputs, doubled=doubled)
        print(f"{name} {case}: request {payload.size:,} bytes, {code:,} besides the inputs (weights: {weights:,})")
        # the code and the plan: ~1 kB per hook (toy-llava's 30 layers: ~190 kB), whatever the model's size
        assert code < 300_000, f"{code} bytes besides the inputs"
        assert payload.foreign == frozenset(), f"named by reference: {sorted(payload.foreign)}"
        largest_input = max(value.numel() * value.element_size() for value in inputs.values())
        # the image (and VCD's noised copy, in one tensor)
        assert _largest_binary(payload.blob) <= (2 if doubled else 1) * largest_input + 1024


def _largest_binary(blob: bytes) -> int:
    import pickletools

    return max((len(arg) for op, arg, _ in pickletools.genops(blob) if isinstance(arg, bytes)), default=0)


@pytest.mark.slow  # a subprocess that builds the model, then runs the requests with sinklens unimportable
@pytest.mark.parametrize("name", REMOTE_MODELS)
def test_a_server_without_sinklens_or_jaxtyping_runs_the_request(name):
    """tests/ndif_emulation.py: every intervention in one stack, forward and generate, sinklens unimportable."""
    script = Path(__file__).with_name("ndif_emulation.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(sl.__file__).parents[1]), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script), name], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(name, result)
    assert not result["sinklens_imported"]
    assert result["same_inf"] and result["sinks_equal"] and result["scan_layers"] == [2]
    assert result["forward_max_diff"] <= TOLERANCE and result["generate_max_diff"] <= TOLERANCE
    assert result["contribution_max_diff"] <= TOLERANCE  # W_O read from the server's model


def _saved_copy(name: str, tmp_path_factory) -> Path:
    """A folder holding the built-in's config, processor and weights, as a hub checkpoint would."""
    if name == "toy-llava":  # its cached assembly is such a folder already
        from sinklens.builtin import parts

        runner_for(name)  # loads toy-llava, which assembles the folder the first time
        (folder,) = [path for path in parts.cache_root().glob("toy-llava-*") if (path / "config.json").is_file()]
        return folder
    folder = tmp_path_factory.mktemp(name)
    lm = runner_for(name).loaded
    lm.model.save_pretrained(folder)
    lm.processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", REMOTE_MODELS)
def test_a_weightless_client_gets_the_local_logits_from_a_server(name, tmp_path_factory, monkeypatch):
    """connect() on a checkpoint folder gives a meta-model client; Simulation(server=...) runs its requests as NDIF would."""
    from sinklens.backends.nnsight_backend import wrap
    from sinklens.backends.remote import connect

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = connect(str(_saved_copy(name, tmp_path_factory)), check=False)
    assert client.remote is True and client.loaded.model.device.type == "meta"
    assert client.model._remoteable_get_env()["attn_implementation"] == "eager"  # sent with every request
    local = runner_for(name)
    inputs = client.loaded.prepare(*_scene_and_question(name))
    dims = local.loaded.sink_dims  # the folder's name is in no registry
    # AttentionContribution needs W_O, which this client has on the meta device only: the server's is read
    stack = sl.Stack(sl.FindSinks(dims=dims), sl.PAI(alpha=0.3), sl.VAR(), ("blocks.3.attn.hook_pattern", damp_first_key),
                     AttentionContribution(layers=[2]))  # fmt: skip
    simulation = Simulation(server=wrap(local.loaded))
    served = client.forward(inputs, stack, remote=simulation)
    assert_logits_close(local.forward(inputs, stack).logits, served.logits, TOLERANCE, "prefill")
    _same_state(local.forward(inputs, stack).ctx, served.ctx)
    steps = client.generate(inputs, stack, max_new_tokens=STEPS, remote=simulation)
    expected = local.generate(inputs, stack, max_new_tokens=STEPS)
    assert_logits_close(expected.step_logits, steps.step_logits, TOLERANCE, "decoding")
    assert expected.texts == steps.texts
    weights = sum(p.numel() * p.element_size() for p in local.loaded.model.parameters())
    for request, answer in zip(simulation.payloads, simulation.results, strict=True):
        assert request.foreign == frozenset() and request.size < weights / 50
        assert answer.foreign == frozenset()  # what comes back is plain data: no sinklens class in it
        print(f"{name}: request {request.size:,} bytes, answer {answer.size:,} bytes")


def _scene_and_question(name: str):
    from sinklens.builtin import demo_scene

    return demo_scene(name), "What is in the image?"


# ---- before a remote run: key and deployment ----------------------------------------------------

# The shape of NDIF's /status answer (nnsight.status(raw=True)), with made-up deployments.
STATUS = {
    "deployments": {
        "llava-7b": {"repo_id": "llava-hf/llava-1.5-7b-hf", "deployment_level": "HOT", "application_state": "RUNNING",
                     "model_key": "nnsight.modeling.transformers.TransformersModel:{...}", "revision": "main"},
        "llama-8b": {"repo_id": "meta-llama/Llama-3.1-8B", "deployment_level": "WARM", "application_state": "RUNNING"},
        "qwen-7b": {"repo_id": "Qwen/Qwen2-VL-7B-Instruct", "deployment_level": "HOT", "application_state": "DEPLOYING"},
        "cold": {"repo_id": "llava-hf/llava-1.5-13b-hf", "deployment_level": "COLD", "application_state": "NOT_STARTED"},
    }
}  # fmt: skip


def test_a_hosted_model_with_a_key_is_ready():
    check_ready("llava-hf/llava-1.5-7b-hf", api_key="key", status=STATUS)
    assert hosted_models(STATUS) == {
        "llava-hf/llava-1.5-7b-hf": "RUNNING", "meta-llama/Llama-3.1-8B": "RUNNING", "Qwen/Qwen2-VL-7B-Instruct": "DEPLOYING",
    }  # fmt: skip


@pytest.mark.parametrize("key", [None, ""])
def test_without_a_key_the_message_says_how_to_get_and_set_one(key):
    with pytest.raises(RemoteError) as error:
        check_ready("llava-hf/llava-1.5-7b-hf", api_key=key, status=STATUS)
    message = str(error.value)
    for expected in ("no NDIF API key", "https://login.ndif.us", "NDIF_API_KEY", "nnsight.login()", 'remote="local"'):
        assert expected in message


def test_a_model_ndif_does_not_host_is_refused_with_the_hosted_ones():
    with pytest.raises(RemoteError) as error:
        check_ready("llava-hf/llava-1.5-13b-hf", api_key="key", status=STATUS)  # COLD: downloaded, not served
    message = str(error.value)
    assert "does not host llava-hf/llava-1.5-13b-hf" in message
    assert "llava-hf/llava-1.5-7b-hf, meta-llama/Llama-3.1-8B" in message
    assert "Qwen/Qwen2-VL-7B-Instruct" not in message  # not running


def test_the_deployments_task_is_read_from_the_status():
    from sinklens.backends.ndif import deployed_task

    status = {"deployments": {"a": {"repo_id": "x/y", "deployment_level": "HOT", "application_state": "RUNNING",
                                    "task": "image-text-to-text"}}}  # fmt: skip
    assert deployed_task("x/y", status) == "image-text-to-text"
    assert deployed_task("x/z", status) is None


def test_a_model_still_deploying_says_so():
    with pytest.raises(RemoteError, match="DEPLOYING, not RUNNING"):
        check_ready("Qwen/Qwen2-VL-7B-Instruct", api_key="key", status=STATUS)


def test_no_deployment_at_all_says_ndif_is_down():
    with pytest.raises(RemoteError, match="down or unreachable"):
        check_ready("llava-hf/llava-1.5-7b-hf", api_key="key", status={})


@pytest.fixture
def no_key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)


def test_remote_true_without_a_key_fails_before_any_request(no_key):
    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    with pytest.raises(RemoteError, match="NDIF_API_KEY"):
        runner.forward(inputs, [sl.FindSinks(), sl.VAR()], remote=True)
    with pytest.raises(RemoteError, match="NDIF_API_KEY"):
        runner.generate(inputs, [sl.FindSinks(), sl.VAR()], remote=True)


@pytest.mark.parametrize("value", ["ndif", 1, None, "remote"])
def test_a_bad_remote_value_is_refused(value):
    from sinklens.backends.nnsight_backend import NnsightRunner
    from conftest import loaded

    runner, inputs = runner_for("tiny-llava"), demo_inputs("tiny-llava")
    if value is not None:  # None means "the runner's default" in a call
        with pytest.raises(RemoteError, match='"local"'):
            runner.forward(inputs, [], remote=value)
    with pytest.raises(RemoteError, match="remote must be"):
        NnsightRunner(loaded("tiny-llava"), model=runner.model, remote=value)


# ---- the checker itself -------------------------------------------------------------------------


def test_referenced_modules_finds_globals_and_subimports():
    import pickle

    import cloudpickle

    blob = cloudpickle.dumps([torch.nn.functional.pad, json, Path])
    modules = referenced_modules(blob)
    assert {"torch.nn.functional", "json", "pathlib"} <= modules
    assert Payload(size=1, modules=frozenset({"json", "torch", "sinklens.ops", "jaxtyping"})).foreign == {
        "sinklens.ops", "jaxtyping",
    }  # fmt: skip
    assert "sinklens.errors" in referenced_modules(pickle.dumps(RemoteError))


# ---- the command line -----------------------------------------------------------------------------


@pytest.mark.slow  # the CLI twice, end to end: `make test` runs it
def test_sinklens_run_under_the_local_simulation_gives_the_local_result(tmp_path):
    from sinklens.cli import main

    scene = tmp_path / "scene.png"
    assert main(["draw-scene", "--model", "tiny-llava", "--out", str(scene)]) == 0
    results = {}
    for remote in ("off", "local"):
        out = tmp_path / remote
        assert main(["run", "--model", "tiny-llava", "--image", str(scene), "--prompt", "What is in the image?",
                     "--max-new-tokens", "4", "--remote", remote, "--out", str(out)]) == 0  # fmt: skip
        results[remote] = json.loads((out / "result.json").read_text())
    for result in results.values():
        del result["seconds"], result["remote"]
    assert results["off"] == results["local"]


def test_sinklens_run_on_ndif_without_a_key_exits_2_saying_how_to_set_one(tmp_path, capsys, no_key):
    from sinklens.cli import main

    scene = tmp_path / "scene.png"
    assert main(["draw-scene", "--model", "tiny-llava", "--out", str(scene)]) == 0
    code = main(["run", "--model", "llava-hf/llava-1.5-7b-hf", "--image", str(scene), "--prompt", "What is there?",
                 "--remote", "ndif", "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "NDIF_API_KEY" in capsys.readouterr().err


def test_a_study_on_ndif_without_a_key_fails_fast_saying_how_to_set_one(tmp_path, no_key):
    from sinklens.errors import RemoteError
    from sinklens.eval.study import Study
    from sinklens.eval.study_settings import parse_args

    settings = parse_args("fig1_attention_maps", "maps", n=4, smoke_n=2,
                          argv=["--model", "llava-hf/llava-1.5-7b-hf", "--remote", "ndif", "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(RemoteError, match="NDIF_API_KEY"):
        Study.start(settings)


@pytest.mark.slow  # a simulated request per family, prefill and 4 steps
@pytest.mark.parametrize("name", ["tiny-llava-onevision", "tiny-qwen3-vl", "tiny-gemma3", "tiny-smolvlm", "tiny-mistral3"])
def test_the_2026_families_through_the_simulation_give_the_local_run(name):
    """FindSinks + VAR as a remote request (nnsight's local simulation) on each new family: the local logits,
    tokens and findings, and a request that names no module an NDIF server lacks."""
    runner, inputs = runner_for(name), demo_inputs(name)
    stack = lambda: [sl.FindSinks(), sl.VAR()]  # noqa: E731
    simulation = Simulation()
    local, remote = runner.forward(inputs, stack()), runner.forward(inputs, stack(), remote=simulation)
    assert_logits_close(local.logits, remote.logits, TOLERANCE, f"{name} prefill")
    assert simulation.payloads[0].foreign == frozenset()
    _same_state(local.ctx, remote.ctx)
    local_steps = runner.generate(inputs, stack(), max_new_tokens=4)
    remote_steps = runner.generate(inputs, stack(), max_new_tokens=4, remote="local")
    assert_logits_close(local_steps.step_logits, remote_steps.step_logits, TOLERANCE, f"{name} decoding")
    assert local_steps.tokens == remote_steps.tokens
