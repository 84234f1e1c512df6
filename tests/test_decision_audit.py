"""Slips found while auditing every epsilon, strict comparison and complement in a decision (issue 17).

- The image-attention shares divided by `clamp_min(1e-30)`: a row with a positive
  image attention below 1e-30 got a share of `part / 1e-30` instead of `part / s`.
- RandomAblation drew visual sinks when it counted text sinks (`keys="text_sinks"`)
  or a fixed `count`, though its contract is to draw image tokens that are not
  visual sinks, so that it never overlaps SinkAblation.
"""

from __future__ import annotations

import oracles
import pytest
import torch
from torch.testing import assert_close

from sinklens import FindSinks, RandomAblation, ops

from conftest import demo_inputs, runner_for


# fp32: 1e-35 is a normal number below the old floor, 1e-40 a subnormal one
@pytest.mark.parametrize("tiny", [1e-35, 1e-40])
def test_shares_of_a_row_with_tiny_image_attention_are_exact(tiny):
    # BOS (a text sink) holds the row; the image (keys 1, 2) gets `tiny`, on key 1 only
    rows = torch.tensor([[[[1.0 - tiny, tiny, 0.0]]]], dtype=torch.float32)
    image = torch.tensor([[False, True, True]])
    for sink, nonsink_share in ((torch.tensor([[True, False, False]]), 1.0), (torch.tensor([[True, True, False]]), 0.0)):
        ratio, image_attention = ops.visual_nonsink_ratio(rows, image, sink)
        expected_ratio, expected_attention = oracles.image_attention_and_ratio(rows, image, sink)
        assert image_attention.item() > 0.0
        assert ratio.item() == expected_ratio.item() == nonsink_share
        share, _ = ops.visual_sink_share(rows, image, sink)
        assert share.item() == 1.0 - nonsink_share
    # the paper's VAR with summ = 0 edits the row: r = 1 >= rho, and BOS gives p of its mass to key 1
    sink = torch.tensor([[True, False, False]])
    ratio, image_attention = ops.visual_nonsink_ratio(rows, image, sink)
    selected = ops.image_centric(ratio, image_attention, rho=0.5, summ=0.0)
    assert selected.item()
    out = ops.redistribute(rows, sink, image & ~sink, selected, keep=0.4)
    queries = torch.ones(1, 1, dtype=torch.bool)
    expected = oracles.var_rows(rows, image, sink, queries, p=0.6, rho=0.5, summ=0.0, convention="paper")
    assert_close(out.double(), expected, atol=1e-6, rtol=0)


def drawn_and_sinks(stack):
    result = runner_for("tiny-llava").forward(demo_inputs("tiny-llava"), stack)
    return result.ctx.records["random_ablation"], result.ctx.sinks, result.ctx.image.mask


@pytest.mark.parametrize("seed", range(5))
def test_random_ablation_counting_text_sinks_draws_no_visual_sink(seed):
    drawn, sinks, image = drawn_and_sinks([FindSinks(), RandomAblation(seed=seed, keys="text_sinks")])
    for layer, keys in drawn.items():
        assert keys.sum() == (sinks[layer] & ~image).sum(), "as many as the text sinks"
        assert not (keys & ~image).any() and not (keys & sinks[layer]).any(), f"layer {layer}: a sink was drawn"


def test_random_ablation_with_a_count_draws_from_the_non_sink_image_tokens():
    # a count larger than the pool takes all of it: exactly the image tokens that are not visual sinks
    drawn, sinks, image = drawn_and_sinks([FindSinks(), RandomAblation(seed=0, count=10_000)])
    for layer, keys in drawn.items():
        assert (sinks[layer] & image).any(), "the planted scene has visual sinks in every layer"
        assert torch.equal(keys, image & ~sinks[layer])
    # without FindSinks there is no sink set: every image token is in the pool
    result = runner_for("tiny-llava").forward(demo_inputs("tiny-llava"), [RandomAblation(seed=0, count=10_000)])
    assert all(torch.equal(keys, result.ctx.image.mask) for keys in result.ctx.records["random_ablation"].values())
