"""`lmms-eval --model sinklens` end to end: lmms-eval's own entry point, a local task, no network.

Each run is `python -m lmms_eval` (what `lmms-eval` and `accelerate launch -m lmms_eval`
run) in a subprocess, on the synthetic POPE written as an lmms-eval task
(`sinklens.integrations.lmms_eval.tasks`), with lmms-eval, HF datasets and the
hub told to stay offline, and an audit hook (a `sitecustomize` on the
subprocess's path) that records and refuses every DNS lookup or socket
connection to a host that is not this machine. Every answer is compared with
what sinklens' own evaluation path gives: `LoadedModel.prepare(image, question)`
and `NnsightRunner.generate(..., max_new_tokens=3)` per example, as
`sinklens eval pope` does.

lmms-eval is an optional dependency (`pip install "sinklens[lmms-eval]"`); `make test`
installs it in a second environment (.venv-lmms) and runs this file there.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "lmms_eval",
    reason="lmms-eval is not installed here: `make test` installs it in .venv-lmms "
    "(constraints-lmms-eval.txt) and runs this file there",
)

import sinklens as sl  # noqa: E402
from sinklens.data.pope import pope, pope_metrics, yes_or_no  # noqa: E402
from sinklens.data.scenes import scene  # noqa: E402
from sinklens.errors import ParameterError  # noqa: E402
from sinklens.integrations.lmms_eval import runs  # noqa: E402
from sinklens.integrations.lmms_eval.tasks import GENERATE, MULTIPLE_CHOICE, export_pope_task  # noqa: E402

from conftest import loaded, runner_for  # noqa: E402

N = 6  # questions per run (three scenes' worth)
MAX_NEW_TOKENS = 3  # sinklens eval pope's default
UNTIL = ["\n\n"]  # the task's stop string

AUDIT = '''
"""Test guard: record and refuse any network use that leaves this machine."""
import os
import socket
import sys

_LOG = os.environ["SINKLENS_NETWORK_LOG"]


def _local(host):
    if isinstance(host, bytes):
        host = host.decode()
    host = "" if host is None else str(host)
    return host in ("", "localhost", "0.0.0.0", "::1", "::") or host.startswith("127.")


def _guard(event, args):
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        sock, address = args
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        host = address[0] if isinstance(address, tuple) else address
    else:
        return
    if not _local(host):
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {event} {host!r}\\n")
        raise OSError(f"network use refused by the test: {event} {host!r}")


sys.addaudithook(_guard)
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lmms")
    export_pope_task(root / "tasks", split="random", n=N, max_new_tokens=MAX_NEW_TOKENS)
    (root / "guard").mkdir()
    (root / "guard" / "sitecustomize.py").write_text(AUDIT)
    return root


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1", "WANDB_MODE": "disabled", "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(root / "hf"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "SINKLENS_NETWORK_LOG": str(root / "network.log"),
        "PYTHONPATH": os.pathsep.join([str(root / "guard"), *filter(None, [env.get("PYTHONPATH")])]),
    })  # fmt: skip
    env.update(extra)
    return env


def _lmms_eval(root: Path, name: str, model_args: str, tasks: list[str], *, launcher: list[str] = (),
               **extra_env: str) -> dict:
    """Run lmms-eval's CLI; return its results JSON and, per task, the answer lmms-eval logged for each doc."""
    out = root / name
    command = [*launcher] if launcher else [sys.executable]
    command += ["-m", "lmms_eval", "--model", "sinklens", "--model_args", model_args,
                "--include_path", str(root / "tasks"), "--tasks", ",".join(tasks),
                "--output_path", str(out), "--log_samples", "--verbosity", "INFO"]  # fmt: skip
    done = subprocess.run(command, env=_env(root, **extra_env), capture_output=True, text=True, timeout=1200)
    log = done.stdout + done.stderr
    (root / f"{name}.log").write_text(log)
    # lmms-eval exits 0 after a failed evaluation: read what it wrote, and its log
    assert done.returncode == 0 and "Error during evaluation" not in log, log[-4000:]
    results = sorted(glob.glob(str(out / "*" / "*_results.json")))
    assert len(results) == 1, f"expected one results file under {out}, found {results}\n{log[-3000:]}"
    found = {"results": json.loads(Path(results[0]).read_text()), "log": log, "answers": {}}
    for task in tasks:
        (samples,) = glob.glob(str(out / "*" / f"*_samples_{task}.jsonl"))
        rows = [json.loads(line) for line in Path(samples).read_text().splitlines()]
        found["answers"][task] = {row["doc_id"]: row["filtered_resps"] for row in rows}
    network = root / "network.log"
    assert not network.exists(), f"network use during the run:\n{network.read_text()}"
    return found


def _reference_answers(name: str, stack: list) -> list[str]:
    """sinklens' own evaluation path: one prompt at a time, as `sinklens eval pope` answers."""
    lm, runner = loaded(name), runner_for(name)
    answers = []
    for example in pope("random", N):
        inputs = lm.prepare(scene("heldout", example.scene_index).image(), example.question)
        text = runner.generate(inputs, stack, max_new_tokens=MAX_NEW_TOKENS).texts[0]
        answers.append(runs.cut_at_stops(text, UNTIL))
    return answers


def _reference_losses(name: str, stack: list) -> list[tuple[float, float]]:
    """Mean NLL of "Yes" and "No" after each prompt, from the processor's tokens of the whole text."""
    lm, runner = loaded(name), runner_for(name)
    import torch

    losses = []
    for example in pope("random", N):
        image = scene("heldout", example.scene_index).image()
        prompt = lm.prompt(1, example.question)
        n_prompt = lm.processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
        pair = []
        for choice in ("Yes", "No"):
            inputs = dict(lm.processor(images=[image], text=[prompt + choice], return_tensors="pt"))
            logprobs = torch.log_softmax(runner.forward(inputs, stack).logits[0].float(), -1)
            ids = inputs["input_ids"][0]
            picked = [float(logprobs[t - 1, ids[t]]) for t in range(n_prompt, len(ids))]
            pair.append(-sum(picked) / len(picked))
        losses.append(tuple(pair))
    return losses


def _in_doc_order(answers: dict[int, object]) -> list:
    assert sorted(answers) == list(range(N))
    return [answers[i] for i in range(N)]


TINY_ARGS = "pretrained=tiny-llava,var=true,rho=0.8,p=0.6,convention=paper,vcd=true,batch_size=4"
TINY_STACK = [sl.FindSinks(convention="paper"), sl.VAR(p=0.6, rho=0.8, convention="paper"), sl.VCD()]


@pytest.fixture(scope="module")
def tiny_run(workdir) -> dict:
    return _lmms_eval(workdir, "tiny", TINY_ARGS, [GENERATE, MULTIPLE_CHOICE])


def test_tiny_llava_answers_and_scores_are_sinklens_own(tiny_run):
    assert _in_doc_order(tiny_run["answers"][GENERATE]) == _reference_answers("tiny-llava", TINY_STACK)
    got = _in_doc_order(tiny_run["answers"][MULTIPLE_CHOICE])  # [[loss, greedy] for Yes, No] as lmms-eval logs them
    losses = _reference_losses("tiny-llava", TINY_STACK)
    for logged, (yes, no) in zip(got, losses):
        assert float(logged[0][0]) == pytest.approx(yes, abs=1e-4)
        assert float(logged[1][0]) == pytest.approx(no, abs=1e-4)
    # lmms-eval picks the choice with the lower loss
    right = [(yes <= no) == (e.label == "yes") for (yes, no), e in zip(losses, pope("random", N))]
    assert tiny_run["results"]["results"][MULTIPLE_CHOICE]["acc,none"] == pytest.approx(sum(right) / N)


def test_toy_llava_with_and_without_var_writes_lmms_eval_results(workdir):
    for tag, model_args, stack in [
        ("toy_plain", "pretrained=toy-llava", []),
        ("toy_var", "pretrained=toy-llava,var=true,rho=0.8,p=0.6,convention=paper", [sl.FindSinks(), sl.VAR()]),
    ]:
        run = _lmms_eval(workdir, tag, model_args, [GENERATE])
        answers = _in_doc_order(run["answers"][GENERATE])
        assert answers == _reference_answers("toy-llava", stack), tag
        metrics = pope_metrics([e.label for e in pope("random", N)], [yes_or_no(a) for a in answers])
        reported = run["results"]["results"][GENERATE]
        assert reported["pope_accuracy,none"] == pytest.approx(metrics["accuracy"])
        assert reported["pope_yes_ratio,none"] == pytest.approx(metrics["yes_ratio"])
        assert run["results"]["config"]["model_args"] == model_args


def test_data_parallel_processes_answer_their_shards_and_agree_with_one_process(workdir, tiny_run):
    # on a CPU-only machine accelerate's launcher starts N processes only with --multi_gpu, and its
    # state is a CPU one only with ACCELERATE_USE_CPU=1 (lmms-eval builds it before the model loads)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "29533"]  # fmt: skip
    run = _lmms_eval(workdir, "tiny_dp", TINY_ARGS, [GENERATE, MULTIPLE_CHOICE], launcher=launcher,
                     ACCELERATE_USE_CPU="1")
    assert "x 2 process(es)" in run["log"]
    for rank in (0, 1):  # each process answered its half of the generate requests
        assert f"sinklens: rank {rank} of 2 answered {N // 2} generate_until requests" in run["log"]
    assert run["answers"] == tiny_run["answers"]
    assert run["results"]["results"] == tiny_run["results"]["results"]


def test_the_guard_refuses_and_records_network_use(workdir):
    # the check that the runs above stayed offline can fail: a lookup of a remote host is refused and logged
    probe = "import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com', timeout=5)\nexcept OSError as e:\n    print('refused', e)\n"
    log = workdir / "probe-network.log"
    done = subprocess.run([sys.executable, "-c", probe], env=_env(workdir, SINKLENS_NETWORK_LOG=str(log)),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "network use refused by the test" in done.stdout, done.stdout + done.stderr
    assert "example.com" in log.read_text()


def test_the_entry_point_registers_the_model_and_model_args_are_checked():
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model

    resolved = MODEL_REGISTRY_V2.resolve("sinklens")
    assert (resolved.model_type, resolved.class_path) == ("simple", "sinklens.integrations.lmms_eval.model.SinklensLMM")
    model_class = get_model("sinklens")
    with pytest.raises(ParameterError, match="unknown model_args rhoo"):
        model_class.create_from_arg_string("pretrained=tiny-llava,rhoo=0.5", {"batch_size": 1})
    # --model_args wins over lmms-eval's --batch_size (whose default, 1, it always passes)
    lm = model_class.create_from_arg_string("pretrained=tiny-llava,batch_size=3", {"batch_size": 1, "device": None})
    assert (lm.batch_size, lm.world_size, str(lm.device)) == (3, 1, "cpu")
    # a device map goes to sinklens.load, which dispatches the model with accelerate
    mapped = model_class.create_from_arg_string('pretrained=tiny-llava,device_map={"": "cpu"}', {"batch_size": 1})
    assert mapped.loaded.model.hf_device_map == {"": "cpu"}
