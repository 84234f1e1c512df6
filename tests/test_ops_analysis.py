"""sinklens.ops.analysis against float64 loop oracles, plus properties."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch.testing import assert_close

from sinklens import ops

from test_ops import attention_rows, bool_matrix
from test_ops import gqa_problem, hf_attention_output

PROPERTY = settings(max_examples=60, deadline=None, database=None)


def loop_mean_query_attention(rows, queries, heads=None):
    batch, n_heads, n_queries, n_keys = rows.shape
    chosen = [h for h in range(n_heads) if heads is None or heads[h]]
    out = torch.zeros(batch, n_keys, dtype=torch.float64)
    for b in range(batch):
        qs = [i for i in range(n_queries) if queries[b, i]]
        for j in range(n_keys):
            total = sum(float(rows[b, h, i, j]) for h in chosen for i in qs)
            out[b, j] = total / (len(chosen) * len(qs)) if qs else 0.0
    return out


@PROPERTY
@given(case=attention_rows(), data=st.data())
def test_mean_query_attention_matches_loop_oracle(case, data):
    rows, _, _, queries = case
    heads = torch.tensor(data.draw(st.lists(st.booleans(), min_size=rows.shape[1], max_size=rows.shape[1])))
    if not heads.any():
        heads[0] = True
    for chosen in (None, heads):
        actual = ops.mean_query_attention(rows, queries, chosen)
        assert_close(actual.double(), loop_mean_query_attention(rows, queries, chosen), atol=1e-6, rtol=1e-5)


@st.composite
def pools(draw):
    batch, n_keys = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    pool = bool_matrix(draw, batch, n_keys)
    counts = torch.tensor(draw(st.lists(st.integers(0, 14), min_size=batch, max_size=batch)))
    return pool, counts, draw(st.integers(0, 2**31 - 1))


@PROPERTY
@given(case=pools())
def test_random_keys_takes_counts_from_the_pool_reproducibly(case):
    pool, counts, seed = case
    chosen = ops.random_keys(pool, counts, torch.Generator().manual_seed(seed))
    assert not (chosen & ~pool).any()
    assert chosen.sum(-1).tolist() == torch.minimum(counts, pool.sum(-1)).tolist()
    again = ops.random_keys(pool, counts, torch.Generator().manual_seed(seed))
    assert torch.equal(chosen, again)



@PROPERTY
@given(case=pools(), data=st.data())
def test_random_keys_each_draws_each_prompt_as_alone_whatever_its_padding(case, data):
    pool, counts, seed = case
    batch, n_keys = pool.shape
    pads = data.draw(st.lists(st.integers(0, 4), min_size=batch, max_size=batch))
    width = n_keys + max(pads)
    # each prompt left-padded to the batch width; padding positions are never in the pool (nor drawn)
    padded = torch.zeros(batch, width, dtype=torch.bool)
    own = torch.zeros(batch, width, dtype=torch.bool)
    for b, pad in enumerate(pads):
        start = width - n_keys - pad
        padded[b, start : start + n_keys], own[b, start : start + n_keys] = pool[b], True
    together = ops.random_keys_each(padded, counts, own, seed)
    assert not (together & ~own).any()
    for b, pad in enumerate(pads):
        start = width - n_keys - pad
        alone = ops.random_keys(pool[b][None], counts[b : b + 1], torch.Generator().manual_seed(seed))[0]
        assert torch.equal(together[b, start : start + n_keys], alone), f"prompt {b} draws as alone"


def test_random_keys_is_uniform_over_the_pool():
    pool = torch.tensor([[True, False, True, True, True]])
    hits = torch.zeros(5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2000):
        hits += ops.random_keys(pool, torch.tensor([2]), generator)[0].float()
    assert hits[1] == 0
    # each of 4 keys is drawn with probability 1/2: 1000 of 2000 draws, within 5 standard deviations
    assert ((hits[[0, 2, 3, 4]] - 1000).abs() < 5 * 22.4).all()


@pytest.mark.parametrize(("n_heads", "n_kv"), [(8, 2), (4, 4), (4, 1)])
def test_contribution_sum_is_the_attention_output(n_heads, n_kv):
    pattern, value, w_o = gqa_problem(n_heads, n_kv)
    got = ops.contribution_sum(pattern, ops.head_value_outputs(value, w_o, n_heads))
    assert_close(got, hf_attention_output(pattern, value, w_o), atol=1e-5, rtol=1e-5)
