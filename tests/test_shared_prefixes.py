"""Shared image prefixes give what running every prompt whole gives: logits, answers and findings.

A batch mixes an image asked six questions (of different lengths) with an image
asked one. `NnsightRunner.generate(..., prefixes=store)` computes each image
prefix once and continues every question from its cache; the same call without
a store runs every prompt whole. For every prefix-safe stack (FindSinks + VAR in
both conventions, SinkAblation, PAI + VAR, VCD + VAR, HeadScores), on every tiny
architecture and both attention routes: step logits within 1e-5 (fp32) in
prefill and over 8 greedy steps, the same tokens, and the same findings at
every prompt's real positions. toy-llava: within 1e-4 in fp32 (its logits reach
40, and a plain left-padded batch differs from each prompt alone by 6.6e-5:
GEMM shapes), the same tokens, and within 1e-9 in fp64. A stack with a member
that is not prefix-safe, a remote run and the TransformerLens backend run prompt
by prompt and say why.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch

import sinklens as sl
from conftest import ARCHS, assert_records_close, assert_steps_close, loaded
from sinklens.builtin import demo_scene
from sinklens.data.scenes import scene
from sinklens.errors import ParameterError
from sinklens.run import PrefixStore

TOLERANCE = 1e-5
STEPS = 8
QUESTIONS = ["What is in the image?", "what colour ?", "is there a red circle in the image ? answer yes or no .",
             "where is it ?", "describe the picture .", "how many things are there ?"]  # fmt: skip

STACKS = {
    "var_paper": lambda: [sl.FindSinks(), sl.VAR()],
    "var_released": lambda: [sl.FindSinks(convention="released"), sl.VAR(convention="released")],
    "sink_ablation": lambda: [sl.FindSinks(), sl.SinkAblation()],
    "pai_then_var": lambda: [sl.FindSinks(), sl.PAI(), sl.VAR()],
    "vcd_with_var": lambda: [sl.FindSinks(), sl.VAR(), sl.VCD()],
    "head_scores": lambda: [sl.FindSinks(), sl.HeadScores()],
}


def examples(name: str) -> list[tuple]:
    """Six questions about the built-in's demo scene, then one about another scene: two prefixes, 6 and 1."""
    return [(demo_scene(name), question) for question in QUESTIONS] + [(scene("heldout", 3).image(), QUESTIONS[2])]


@cache
def runner_on(name: str, route: str) -> sl.NnsightRunner:
    return sl.NnsightRunner(loaded(name) if route == "eager" else sl.load(name, attention=route))


def assert_same_findings(whole, shared, where: str, atol: float = TOLERANCE) -> None:
    """Per prompt, its real positions: the same sink sets and phi; every other record as a whole."""
    for row in range(whole.attention_mask.shape[0]):
        real_whole, real_shared = whole.attention_mask[row], shared.attention_mask[row]
        assert sorted(whole.sinks) == sorted(shared.sinks)
        for layer, sinks in whole.sinks.items():
            assert torch.equal(sinks[row][real_whole], shared.sinks[layer][row][real_shared]), f"{where}: sinks {row}, {layer}"
            phi_whole, phi_shared = whole.phi[layer][row][real_whole], shared.phi[layer][row][real_shared]
            torch.testing.assert_close(phi_shared, phi_whole, rtol=0, atol=atol * 10, msg=lambda m: f"{where}: phi {m}")
    assert_records_close(whole.records, shared.records, f"{where}: records", atol)


def compare(name: str, route: str, stack_name: str, atol: float = TOLERANCE) -> None:
    runner = runner_on(name, route)
    lm = runner.loaded
    if lm.sliding_window is not None:
        return compare_one_at_a_time(runner, name, route, stack_name, atol)
    batch = lm.prepare_batch(examples(name))
    whole = runner.generate(batch, STACKS[stack_name](), max_new_tokens=STEPS)
    store = PrefixStore.for_stack(STACKS[stack_name]())
    shared = runner.generate(lm.prepare_batch(examples(name)), STACKS[stack_name](), max_new_tokens=STEPS, prefixes=store)
    where = f"{name} {route} {stack_name}"
    assert shared.sharing.shared and whole.sharing is None, where
    n_rows = 14 if stack_name == "vcd_with_var" else 7
    assert (shared.sharing.prompts, shared.sharing.computed) == (n_rows, 2 * n_rows // 7), where
    for row, steps in enumerate(decided_steps(whole.step_logits, atol)):
        assert_steps_close(shared.step_logits[row : row + 1, :steps], whole.step_logits[row : row + 1, :steps], atol,
                           f" ({where}, prompt {row})")  # fmt: skip
        decided = steps if steps == whole.step_logits.shape[1] else steps - 1  # a tie's token may go either way
        assert shared.tokens[row][:decided] == whole.tokens[row][:decided], where
    assert_same_findings(whole.ctx, shared.ctx, where, atol)


def decided_steps(step_logits: torch.Tensor, atol: float) -> list[int]:
    """Per prompt, the steps up to and including the first whose two best logits are within `atol` of each other.

    There greedy decoding is a tie: a difference of rounding may pick the other
    token (tiny-mistral3 + VCD has an exact tie at one step), and the two runs
    continue from different tokens. Every step up to the tie is compared.
    """
    top = step_logits.float().topk(2, dim=-1).values
    tied = (top[..., 0] - top[..., 1]) <= atol  # [batch, step]
    n_steps = step_logits.shape[1]
    return [int(row.nonzero()[0]) + 1 if row.any() else n_steps for row in tied]


def compare_one_at_a_time(runner: sl.NnsightRunner, name: str, route: str, stack_name: str, atol: float) -> None:
    """Sliding-window layers (Gemma 3): a batch whose suffixes differ in length runs whole and says why; one question
    at a time shares, reusing the store across calls, and gives each prompt's whole run."""
    lm, where = runner.loaded, f"{name} {route} {stack_name}"
    store = PrefixStore.for_stack(STACKS[stack_name]())
    mixed = runner.generate(lm.prepare_batch(examples(name)), STACKS[stack_name](), max_new_tokens=2, prefixes=store)
    assert not mixed.sharing.shared and "sliding-window" in mixed.sharing.reason, where
    for image, question in examples(name):
        inputs = lm.prepare(image, question)
        whole = runner.generate(inputs, STACKS[stack_name](), max_new_tokens=STEPS)
        shared = runner.generate(inputs, STACKS[stack_name](), max_new_tokens=STEPS, prefixes=store)
        assert shared.sharing.shared, where
        assert_steps_close(shared.step_logits, whole.step_logits, atol, f" ({where})")
        assert shared.tokens == whole.tokens, where
        assert_same_findings(whole.ctx, shared.ctx, where, atol)
    assert store.computed == (4 if stack_name == "vcd_with_var" else 2), where  # VCD: a noised copy of each image


@pytest.mark.parametrize("stack_name", ["var_paper", "vcd_with_var"])
def test_shared_prefixes_give_every_prompt_its_whole_run_on_tiny_llava(stack_name):
    compare("tiny-llava", "eager", stack_name)


@pytest.mark.slow  # every stack, every tiny architecture, both routes: `make test` runs it
@pytest.mark.parametrize("route", ["eager", "rows"])
@pytest.mark.parametrize("stack_name", list(STACKS))
@pytest.mark.parametrize("name", list(ARCHS))
def test_shared_prefixes_on_every_architecture_stack_and_route(name, stack_name, route):
    compare(name, route, stack_name)


@pytest.mark.slow  # toy-llava, fp32 and fp64
def test_toy_llava_shares_prefixes_to_rounding_in_fp32_and_exactly_in_fp64():
    """fp32, a mixed batch: within 1e-4 (toy-llava's logits reach 40; a plain padded batch differs from each prompt
    alone by 6.6e-5). fp64, one prompt at a time from the store (HF's eager attention gives a left-padded row NaN in
    fp64, so no padding here): within 1e-9, so what is left in fp32 is rounding."""
    stack = lambda: [sl.FindSinks(), sl.VAR()]  # noqa: E731
    lm = loaded("toy-llava")
    runner = sl.NnsightRunner(lm)
    rows = [(scene("heldout", 0).image(), q) for q in QUESTIONS[:3]] + [(scene("heldout", 1).image(), QUESTIONS[3])]
    whole = runner.generate(lm.prepare_batch(rows), stack(), max_new_tokens=STEPS)
    shared = runner.generate(lm.prepare_batch(rows), stack(), max_new_tokens=STEPS, prefixes=PrefixStore.for_stack(stack()))
    assert shared.sharing.computed == 2
    assert_steps_close(shared.step_logits, whole.step_logits, 1e-4, " (toy-llava fp32)")
    assert shared.tokens == whole.tokens
    assert_same_findings(whole.ctx, shared.ctx, "toy-llava fp32", 1e-4)
    lm64 = sl.load("toy-llava", dtype=torch.float64)
    runner64, store = sl.NnsightRunner(lm64), PrefixStore.for_stack(stack())
    for image, question in rows[:2]:
        inputs = lm64.prepare(image, question)
        whole = runner64.generate(inputs, stack(), max_new_tokens=STEPS)
        shared = runner64.generate(inputs, stack(), max_new_tokens=STEPS, prefixes=store)
        assert_steps_close(shared.step_logits, whole.step_logits, 1e-9, " (toy-llava fp64)")
        assert_same_findings(whole.ctx, shared.ctx, "toy-llava fp64", 1e-9)
    assert store.computed == 1


def test_one_question_at_a_time_reuses_the_image_prefix_from_the_store():
    runner = runner_on("tiny-llava", "eager")
    lm = runner.loaded
    stack = [sl.FindSinks(), sl.VAR()]
    store = PrefixStore.for_stack(stack, capacity=1)
    for index, (image, question) in enumerate(examples("tiny-llava")[:3]):
        inputs = lm.prepare(image, question)
        shared = runner.generate(inputs, stack, max_new_tokens=4, prefixes=store)
        assert (shared.sharing.computed, shared.sharing.reused) == ((1, 0) if index == 0 else (0, 1))
        whole = runner.generate(inputs, stack, max_new_tokens=4)
        assert_steps_close(shared.step_logits, whole.step_logits, TOLERANCE)
    assert store.computed == 1 and len(store) == 1


def test_a_stack_with_a_member_that_is_not_prefix_safe_runs_prompt_by_prompt_naming_it():
    runner = runner_on("tiny-llava", "eager")
    lm = runner.loaded
    seen = []

    def note_rows(pattern, ctx):  # a user's own hook: it may read any row, so it is not declared safe
        seen.append(pattern.shape[-2])

    for stack, named in (([sl.FindSinks(), sl.VAR(), sl.Hook("blocks.1.attn.hook_pattern", note_rows, writes=False)],
                          "note_rows"),
                         ([sl.FindSinks(), sl.RandomAblation(seed=2)], "RandomAblation")):  # fmt: skip
        batch = lm.prepare_batch(examples("tiny-llava")[:3])
        result = runner.generate(batch, stack, max_new_tokens=3, prefixes=PrefixStore.for_stack(stack))
        assert not result.sharing.shared and named in result.sharing.reason and "prefix-safe" in result.sharing.reason
        whole = runner.generate(batch, stack, max_new_tokens=3)
        assert_steps_close(result.step_logits, whole.step_logits, 0.0)
    assert seen and seen[0] == batch["input_ids"].shape[1]  # the whole prompt's rows: nothing was cut
    declared = [sl.FindSinks(), sl.Hook("blocks.1.attn.hook_pattern", note_rows, writes=False, prefix_safe=True)]
    result = runner.generate(batch, declared, max_new_tokens=3, prefixes=PrefixStore.for_stack(declared))
    assert result.sharing.shared


def test_a_prefix_pass_has_no_query_and_no_last_row_and_a_continuation_holds_the_suffix_only():
    runner = runner_on("tiny-llava", "eager")
    lm = runner.loaded
    rows = []

    def last_rows(pattern, ctx):
        picked = ctx.last_rows(pattern)
        rows.append((ctx.spec.is_prefix, ctx.held_from, pattern.shape[-2], picked.queries.sum(-1).tolist()))

    stack = [sl.Hook("blocks.2.attn.hook_pattern", last_rows, writes=False, prefill_only=True, prefix_safe=True)]
    batch = lm.prepare_batch(examples("tiny-llava")[:2])
    runner.generate(batch, stack, max_new_tokens=2, prefixes=PrefixStore.for_stack(stack))
    (prefix_pass, continued) = rows
    assert prefix_pass[0] and prefix_pass[3] == [0]  # the prefix's last row is an image token: never a query
    assert not continued[0] and continued[3] == [1, 1]  # each prompt's last position, found by position
    assert continued[2] == batch["input_ids"].shape[1] - continued[1]  # the suffix rows, from the cache's end


def test_a_store_belongs_to_one_stack_and_keeps_what_a_batch_needs():
    stack = [sl.FindSinks(), sl.VAR()]
    store = PrefixStore.for_stack(stack, capacity=1)
    with pytest.raises(ParameterError, match="needs a store of its own"):
        store.check([sl.FindSinks(), sl.VAR(p=0.3)])
    with pytest.raises(ParameterError, match="capacity"):
        PrefixStore.for_stack(stack, capacity=0)
    runner = runner_on("tiny-llava", "eager")
    batch = runner.loaded.prepare_batch(examples("tiny-llava"))  # two prefixes in one batch, capacity one
    result = runner.generate(batch, stack, max_new_tokens=2, prefixes=store)
    assert result.sharing.computed == 2 and len(store) == 2  # both kept while the batch needed them


@pytest.mark.ships
def test_a_remote_run_goes_prompt_by_prompt_and_says_so():
    runner = runner_on("tiny-llava", "eager")
    stack = [sl.FindSinks(), sl.VAR()]
    batch = runner.loaded.prepare_batch(examples("tiny-llava")[:2])
    result = runner.generate(batch, stack, max_new_tokens=2, remote="local", prefixes=PrefixStore.for_stack(stack))
    assert not result.sharing.shared and "remote" in result.sharing.reason


@pytest.mark.slow  # builds a bridge
def test_the_transformer_lens_backend_says_it_shares_no_prefixes():
    from sinklens.backends.transformer_lens_backend import TransformerLensRunner

    lm = loaded("tiny-llava")
    stack = [sl.FindSinks(), sl.VAR()]
    batch = lm.prepare_batch(examples("tiny-llava")[:2])
    result = TransformerLensRunner(lm).generate(batch, stack, max_new_tokens=2, prefixes=PrefixStore.for_stack(stack))
    assert not result.sharing.shared and "TransformerLens" in result.sharing.reason
    whole = runner_on("tiny-llava", "eager").generate(batch, stack, max_new_tokens=2)
    assert result.tokens == whole.tokens
