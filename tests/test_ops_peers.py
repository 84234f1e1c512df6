"""The peer-method ops (PAI's score boost, VCD's contrast and noise) against loop oracles, plus properties."""

from __future__ import annotations


import hypothesis.strategies as st
import oracles_peers as oracles
import pytest
import torch
from hypothesis import assume, given, settings
from torch.testing import assert_close

from sinklens import ops

PROPERTY = settings(max_examples=60, deadline=None, database=None)


def random(shape, seed, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@st.composite
def score_problems(draw):
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    n_queries, n_keys = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    seed, scale = draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from([0.1, 3.0]))
    scores = random((batch, heads, n_queries, n_keys), seed, scale)
    if draw(st.booleans()):  # an HF-style masked entry: the dtype's minimum
        scores[..., -1] = torch.finfo(scores.dtype).min
    image = torch.tensor(draw(st.lists(st.booleans(), min_size=batch * n_keys, max_size=batch * n_keys)))
    queries = torch.tensor(draw(st.lists(st.booleans(), min_size=batch * n_queries, max_size=batch * n_queries)))
    return scores, image.reshape(batch, n_keys), queries.reshape(batch, n_queries)


@PROPERTY
@given(score_problems(), st.floats(0.0, 2.0))
def test_boost_image_scores_matches_oracle(case, alpha):
    scores, image, queries = case
    got = ops.boost_image_scores(scores, image, queries, alpha=alpha)
    assert_close(got.double(), oracles.boost_image_scores(scores, image, queries, alpha), atol=1e-6, rtol=1e-6)


@PROPERTY
@given(score_problems(), st.floats(0.0, 2.0))
def test_boost_touches_only_image_keys_of_chosen_queries_and_never_lowers_a_score(case, alpha):
    scores, image, queries = case
    got = ops.boost_image_scores(scores, image, queries, alpha=alpha)
    chosen = image[:, None, None, :] & queries[:, None, :, None]
    assert torch.equal(got[~chosen.expand_as(got)], scores[~chosen.expand_as(got)])
    assert (got >= scores).all()
    assert torch.equal(ops.boost_image_scores(scores, image, queries, alpha=0.0), scores)


@st.composite
def logit_pairs(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))) + (draw(st.integers(1, 9)),)
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.5, 4.0]))
    return random(shape, seed, scale), random(shape, seed + 1, scale)


def assert_logits_match(got, expected, atol=1e-5):
    assert torch.equal(torch.isinf(got), torch.isinf(expected)), "the plausibility cut-off kept different tokens"
    finite = torch.isfinite(expected)
    assert_close(got.double()[finite], expected[finite], atol=atol, rtol=1e-6)


@PROPERTY
@given(logit_pairs(), st.floats(0.0, 3.0), st.floats(0.0, 1.0))
def test_contrastive_logits_matches_oracle(case, alpha, beta):
    logits, contrast = case
    expected = oracles.contrastive_logits(logits, contrast, alpha, beta)
    # a token whose probability lies within rounding of beta * max may be kept by one and cut by the other
    probabilities = logits.double().softmax(-1)
    margin = (probabilities - beta * probabilities.amax(-1, keepdim=True)).abs().min()
    assume(margin >= 1e-6)
    assert_logits_match(ops.contrastive_logits(logits, contrast, alpha=alpha, beta=beta), expected)


@PROPERTY
@given(logit_pairs(), st.floats(0.0, 3.0), st.floats(0.0, 1.0))
def test_the_most_likely_image_token_always_survives_the_cut_off(case, alpha, beta):
    logits, contrast = case
    got = ops.contrastive_logits(logits, contrast, alpha=alpha, beta=beta)
    best = logits.argmax(-1, keepdim=True)
    assert torch.isfinite(got.gather(-1, best)).all()
    assert torch.isfinite(ops.contrastive_logits(logits, contrast, alpha=alpha, beta=0.0)).all()


def test_contrast_with_alpha_zero_is_the_image_logits_where_plausible():
    logits, contrast = random((2, 5), 0), random((2, 5), 1)
    got = ops.contrastive_logits(logits, contrast, alpha=0.0, beta=0.0)
    assert torch.equal(got, logits)


@pytest.mark.parametrize("step", [0, 1, 499, 999])
def test_diffusion_noise_matches_oracle(step):
    pixels, noise = random((1, 3, 4, 4), 2), random((1, 3, 4, 4), 3)
    got = ops.diffusion_noise(pixels, noise, step=step)
    assert_close(got.double(), oracles.diffusion_noise(pixels, noise, step), atol=1e-6, rtol=1e-6)


def test_diffusion_schedule_loses_signal_step_by_step_and_keeps_unit_variance():
    signals = [ops.diffusion_schedule(step)[0] for step in range(0, 1000, 111)]
    assert signals == sorted(signals, reverse=True)
    assert signals[0] > 0.9999 and ops.diffusion_schedule(999)[0] < 0.3
    for step in (0, 500, 999):
        signal, spread = ops.diffusion_schedule(step)
        assert signal**2 + spread**2 == pytest.approx(1.0)
    assert ops.diffusion_schedule(500) == pytest.approx(oracles.diffusion_coefficients(500), rel=1e-12)
