"""Batches with left padding and prompts with several images: each example as if it ran alone."""

from __future__ import annotations

from functools import cache

import pytest
from PIL import Image

from sinklens import VAR, FindSinks, RandomAblation
from sinklens.builtin import demo_scene
from sinklens.builtin.tiny_shared import draw_blocks

from conftest import ARCHS, loaded, max_diff, runner_for
from test_var_nnsight import STEPS, TOLERANCE, assert_matches_oracle


# tiny-llava-next's anyres grid makes the longest prompts: its batch tests are slow (make test runs them)
NAMES = [pytest.param(name, marks=pytest.mark.slow) if name == "tiny-llava-next" else name for name in ARCHS]


@cache
def examples(name: str) -> list:
    """Four prompts of different lengths: different image sizes, and two images in the second prompt."""
    scene = demo_scene(name)
    tall = draw_blocks(112, 168, [(28, 28, 56, 56), (56, 112, 84, 140)])
    return [
        (scene, "what is in the image ?"),
        ([tall, scene], "which image has a red circle on the left and a green box on the right ?"),
        (tall, "how many"),
        (scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "is there a green box in the bottom left corner ?"),
    ]


@cache
def batch(name: str):
    return loaded(name).prepare_batch(examples(name))


@pytest.mark.parametrize("name", list(ARCHS))
def test_batch_is_left_padded_with_per_example_images(name):
    inputs = batch(name)
    lengths = inputs["attention_mask"].sum(-1).tolist()
    assert len(set(lengths)) == 4, "the examples must have different lengths"
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][:, 0].all()
    spans = loaded(name).check_inputs(inputs)
    assert [len(spans.images_of(prompt)) for prompt in range(4)] == [1, 2, 1, 1]


@pytest.mark.parametrize("name", NAMES)
def test_var_on_a_batch_matches_the_oracle(name):
    stack = [FindSinks(), VAR()]
    prefill, decoding = assert_matches_oracle(name, batch(name), stack, "paper", {})
    assert prefill <= TOLERANCE and decoding <= TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_each_example_of_a_batch_equals_it_alone_with_var(name):
    lm, runner = loaded(name), runner_for(name)
    stack = [FindSinks(), VAR()]
    inputs = batch(name)
    together = runner.forward(inputs, stack)
    generated = runner.generate(inputs, stack, max_new_tokens=STEPS)
    for index, example in enumerate(examples(name)):
        alone_inputs = lm.prepare(*example)
        n = alone_inputs["input_ids"].shape[1]
        alone = runner.forward(alone_inputs, stack)
        alone_generated = runner.generate(alone_inputs, stack, max_new_tokens=STEPS)
        # left padding: the example's own positions are the last n of the batch row
        prefill = max_diff(together.logits[index, -n:], alone.logits[0])
        decoding = max_diff(generated.step_logits[index], alone_generated.step_logits[0])
        assert prefill <= TOLERANCE, f"example {index}, prefill: max abs diff {prefill}"
        assert decoding <= TOLERANCE, f"example {index}, {STEPS} decoding steps: max abs diff {decoding}"
        for layer in (2, 4):
            assert together.ctx.sinks[layer][index, -n:].tolist() == alone.ctx.sinks[layer][0].tolist()
        assert generated.tokens[index] == alone_generated.tokens[0]



def test_random_ablation_draws_each_example_of_a_batch_as_alone():
    """Each prompt draws its random keys on its own positions: the same keys and logits in a padded batch as alone."""
    name = "tiny-llava"
    lm, runner = loaded(name), runner_for(name)
    stack = [FindSinks(), RandomAblation(seed=5, count=3)]
    inputs = batch(name)
    together = runner.forward(inputs, stack)
    for index, example in enumerate(examples(name)):
        alone_inputs = lm.prepare(*example)
        n = alone_inputs["input_ids"].shape[1]
        alone = runner.forward(alone_inputs, stack)
        for layer, drawn in alone.ctx.records["random_ablation"].items():
            assert drawn[0].sum() == 3
            assert together.ctx.records["random_ablation"][layer][index, -n:].tolist() == drawn[0].tolist()
        assert max_diff(together.logits[index, -n:], alone.logits[0]) <= TOLERANCE


def test_prepare_batch_pads_on_the_left_whatever_the_tokenizer_says():
    from sinklens.models import load

    lm = load("tiny-llava")
    lm.processor.tokenizer.padding_side = "right"
    inputs = lm.prepare_batch(examples("tiny-llava")[:3])
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][:, 0].all()


def test_a_right_padded_batch_is_refused_with_the_fix():
    from sinklens.errors import PaddingError

    lm = loaded("tiny-llava")
    texts = [lm.prompt(1, question) for _, question in examples("tiny-llava")[2:]]
    images = [image for image, _ in examples("tiny-llava")[2:]]
    inputs = lm.processor(images=images, text=texts, padding=True, padding_side="right", return_tensors="pt")
    with pytest.raises(PaddingError, match=r"prompt\(s\) \[0\] .* padded on the right. Pad on the left"):
        lm.check_inputs(inputs)
