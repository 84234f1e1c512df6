"""The lmms-eval model's parts that do not need lmms-eval: its arguments, generation and scoring.

The end-to-end runs through lmms-eval itself are in tests/test_lmms_eval.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sinklens as sl
from sinklens.errors import ParameterError
from sinklens.integrations.lmms_eval import runs
from sinklens.integrations.lmms_eval.settings import KNOWN, parse_model_args
from sinklens.builtin import demo_scene

from conftest import loaded, runner_for

# the lmms-eval integration, not the core: `make test` runs it, `make test-fast` does not
pytestmark = pytest.mark.slow

QUESTIONS = ("What is in the image?", "Is there a circle in the image? Answer yes or no.", "Describe it.")


# -- model_args ---------------------------------------------------------------------------------


def test_model_args_give_the_stack_and_the_run_settings():
    s = parse_model_args({"pretrained": "tiny-llava", "var": True, "rho": 0.8, "p": 0.6, "tau": 20,
                          "convention": "paper", "vcd": "true", "batch_size": "4", "sink_dims": "1415:2533",
                          "device_map": "auto", "max_batch_size": None})  # fmt: skip
    find, var, vcd = s.stack()
    assert find == sl.FindSinks(dims=(1415, 2533), tau=20.0, convention="paper")
    assert var == sl.VAR(p=0.6, rho=0.8, convention="paper")
    assert vcd == sl.VCD()
    assert (s.batch_size, s.device_map, s.torch_dtype) == (4, "auto", torch.float32)
    assert parse_model_args({"pretrained": "x"}).stack() == []  # no var, no vcd: the plain model
    assert parse_model_args({"pretrained": "x", "device_map": '{"model": 0}'}).device_map == {"model": 0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"pretrained": "x", "rhoo": 0.5}, "unknown model_args rhoo"),
        ({"var": True}, "needs pretrained=NAME_OR_PATH"),
        ({"pretrained": "x", "var": True, "rho": 1.5}, "rho must be in [0, 1]"),
        ({"pretrained": "x", "var": "maybe"}, "var='maybe': give true or false"),
        ({"pretrained": "x", "batch_size": "auto"}, "no 'auto' batch size"),
        ({"pretrained": "x", "batch_size": 0}, "whole number >= 1"),
        ({"pretrained": "x", "dtype": "float8"}, "dtype='float8'"),
        ({"pretrained": "x", "sink_dims": "first"}, "sink_dims='first'"),
        ({"pretrained": "x", "var": True, "convention": "code"}, "convention must be 'paper'"),
        ({"pretrained": "x", "device": "cpu", "device_map": "auto"}, "not both"),
        ({"pretrained": "x", "device_map": "{not json"}, "is not valid JSON"),
        ({"pretrained": "x", "var": True, "tau": 20, "tau_fraction": 0.3}, "not both"),
    ],
)
def test_bad_model_args_fail_before_loading_and_name_the_fix(args, message):
    with pytest.raises(ParameterError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_model_args(args)


def test_the_unknown_key_message_lists_every_known_key():
    with pytest.raises(ParameterError) as caught:
        parse_model_args({"pretrained": "x", "alpha": 1})
    assert all(key in str(caught.value) for key in KNOWN)


# -- stop strings ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab\n .", max_size=30), st.lists(st.text(alphabet="ab\n .", max_size=3), max_size=3))
def test_cut_at_stops_keeps_the_text_before_the_earliest_stop(text, stops):
    cut = runs.cut_at_stops(text, stops)
    assert text.startswith(cut)
    real = [stop for stop in stops if stop]
    # naive oracle: the shortest prefix followed by a stop, else everything
    ends = [i for i in range(len(text) + 1) if any(text[i:].startswith(stop) for stop in real)]
    assert cut == (text[: ends[0]] if ends else text)


# -- generation: short runs first give the long run's answers --------------------------------------


def test_generate_gives_the_answers_of_one_full_length_run_per_prompt(monkeypatch):
    lm, runner = loaded("tiny-llava"), runner_for("tiny-llava")
    stack = [sl.FindSinks(), sl.VAR()]
    examples = [(demo_scene("tiny-llava"), question) for question in QUESTIONS]
    full = [runner.generate(lm.prepare(*example), stack, max_new_tokens=9) for example in examples]
    # a stop that cuts the first answer after its first word (the others may run on)
    first = full[0].texts[0]
    stop = first.split(" ")[1] if " " in first else "\n"
    monkeypatch.setattr(runs, "FIRST_STEPS", 2)  # force reruns: 2, 4, 8, 9 steps
    calls = []
    original = runner.generate

    def counting(inputs, interventions, *, max_new_tokens):
        calls.append((inputs["input_ids"].shape[0], max_new_tokens))
        return original(inputs, interventions, max_new_tokens=max_new_tokens)

    monkeypatch.setattr(runner, "generate", counting)
    got = runs.generate(lm, runner, stack, examples, max_new_tokens=9, stops=[stop])
    assert got == [runs.cut_at_stops(result.texts[0], [stop]) for result in full]
    assert calls[0] == (3, 2) and calls[-1][1] <= 9 and len(calls) >= 2


def test_requests_about_one_image_are_asked_together_and_share_its_prefix():
    """by_image groups the requests by image content (first-seen order); runs.generate with a store computes each
    image's prefix once, reruns included, and answers as without it."""
    from sinklens.data.scenes import scene
    from sinklens.run import PrefixStore

    lm, runner = loaded("tiny-llava"), runner_for("tiny-llava")
    demo, other = demo_scene("tiny-llava"), scene("heldout", 2).image()
    examples = {0: (demo, QUESTIONS[0]), 1: (other, QUESTIONS[0]), 2: (demo.copy(), QUESTIONS[1]), 3: ([other], QUESTIONS[2])}
    assert runs.by_image(examples) == [0, 2, 1, 3]  # a copy is the same image; one image in a list is that image
    ordered = [examples[i] for i in runs.by_image(examples)]
    stack = [sl.FindSinks(), sl.VAR()]
    store = PrefixStore.for_stack(stack)
    shared = runs.generate(lm, runner, stack, ordered, max_new_tokens=12, prefixes=store)
    assert shared == runs.generate(lm, runner, stack, ordered, max_new_tokens=12)
    assert store.computed == 2  # two images: the first 8-step run computed both, the longer rerun reused them


# -- log-likelihood ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_append_tokens_equals_the_processor_on_the_whole_text(name):
    lm = loaded(name)
    image = demo_scene(name)
    prompts = [lm.prompt(1, question) for question in QUESTIONS[:2]]
    tails = [runs.continuation_ids(lm, prompt, cont) for prompt, cont in zip(prompts, ["yes", " no it is not"])]
    got = runs.append_tokens(lm.prepare_batch([(image, q) for q in QUESTIONS[:2]]), tails, lm.tokenizer.pad_token_id)
    whole = lm.processor(images=[image, image], text=[prompts[0] + "yes", prompts[1] + " no it is not"],
                         padding=True, padding_side="left", return_tensors="pt")  # fmt: skip
    assert set(got) == set(whole)
    for key in whole:
        torch.testing.assert_close(got[key], whole[key].to(got[key].device), msg=key)


def _oracle_logprob(lm, runner, stack, image, question, continuation):
    """log P(continuation | prompt) from the processor's tokens of the whole text, one prompt alone."""
    prompt = lm.prompt(1, question)
    n_prompt = len(lm.processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"][0])
    inputs = dict(lm.processor(images=[image], text=[prompt + continuation], return_tensors="pt"))
    logprobs = torch.log_softmax(runner.forward(inputs, stack).logits[0].float(), -1)
    ids = inputs["input_ids"][0]
    return sum(float(logprobs[t - 1, ids[t]]) for t in range(n_prompt, len(ids))), len(ids) - n_prompt


def test_loglikelihood_matches_a_one_prompt_oracle_and_the_first_generation_step():
    lm, runner = loaded("tiny-llava"), runner_for("tiny-llava")
    stack = [sl.FindSinks(), sl.VAR()]
    image = demo_scene("tiny-llava")
    examples = [(image, QUESTIONS[0]), (image, QUESTIONS[1]), ([image, image], QUESTIONS[2])]
    continuations = ["yes", " no it is not", "a circle"]
    scores = runs.loglikelihood(lm, runner, stack, examples, continuations)
    for (images, question), cont, score in zip(examples[:2], continuations, scores):
        logprob, n = _oracle_logprob(lm, runner, stack, images, question, cont)
        assert score.tokens == n
        assert score.logprob == pytest.approx(logprob, abs=1e-4)
        assert score.mean_nll == pytest.approx(-logprob / n, abs=1e-4)
    # the first continuation token is scored on what greedy decoding's first step sees
    step = runner.generate(lm.prepare(image, QUESTIONS[0]), stack, max_new_tokens=1)
    first = torch.log_softmax(step.step_logits[0, 0].float(), -1)
    yes = lm.tokenizer("yes", add_special_tokens=False)["input_ids"][0]
    assert scores[0].logprob == pytest.approx(float(first[yes]), abs=1e-4)
    assert scores[0].greedy == (int(first.argmax()) == yes)
    # the greedy flag says whether decoding produces the continuation: score the model's own answer
    answer = runner.generate(lm.prepare(image, QUESTIONS[1]), stack, max_new_tokens=3).tokens[0]
    own = lm.tokenizer.decode(answer)
    assert runs.loglikelihood(lm, runner, stack, [(image, QUESTIONS[1])], [own])[0].greedy


def test_vcd_scores_differ_from_the_plain_model():
    lm, runner = loaded("tiny-llava"), runner_for("tiny-llava")
    example = [(demo_scene("tiny-llava"), QUESTIONS[1])]
    plain = runs.loglikelihood(lm, runner, [], example, ["yes"])[0]
    vcd = runs.loglikelihood(lm, runner, [sl.VCD(beta=0.0)], example, ["yes"])[0]
    assert plain.logprob != pytest.approx(vcd.logprob, abs=1e-6)


# -- packaging ---------------------------------------------------------------------------------------


def test_lmms_eval_is_an_extra_and_the_entry_point_names_the_manifest():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(dep.lower().startswith("lmms") for dep in project["dependencies"])
    assert not any(dep.lower().startswith("lmms") for dep in project["optional-dependencies"]["dev"])
    assert project["optional-dependencies"]["lmms-eval"] == ["lmms-eval>=0.7,<0.8"]
    target = project["entry-points"]["lmms_eval.models"]["sinklens"]
    module, function = target.split(":")
    assert module == "sinklens.integrations.lmms_eval" and function == "model_manifest"
    # importing the package the entry point names pulls in neither lmms-eval nor a backend
    import subprocess
    import sys

    probe = ("import sys, sinklens.integrations.lmms_eval as m, sinklens.integrations.lmms_eval.settings; "
             "print(callable(m.model_manifest), sorted(k for k in ('lmms_eval', 'nnsight', 'transformer_lens') if k in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "[]"], done.stdout + done.stderr


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl"])
def test_every_architecture_answers_and_scores_in_batches_as_alone(name):
    lm, runner = loaded(name), runner_for(name)
    stack = [sl.FindSinks(), sl.VAR()]
    image = demo_scene(name)
    examples = [(image, QUESTIONS[0]), (image, QUESTIONS[1])]
    alone = [runner.generate(lm.prepare(*example), stack, max_new_tokens=4).texts[0] for example in examples]
    assert runs.generate(lm, runner, stack, examples, max_new_tokens=4) == alone
    scores = runs.loglikelihood(lm, runner, stack, examples, ["yes", " no it is not"])
    for (images, question), cont, score in zip(examples, ["yes", " no it is not"], scores):
        logprob, n = _oracle_logprob(lm, runner, stack, images, question, cont)
        assert (score.tokens, score.logprob) == (n, pytest.approx(logprob, abs=1e-4))


def test_the_settings_docstring_example_runs():
    import doctest

    import sinklens.integrations.lmms_eval.settings as module

    assert doctest.testmod(module).failed == 0
