"""sinklens.ops against the loop oracles in oracles.py (SPEC sections 1-5), plus properties."""

from __future__ import annotations

import os

import hypothesis.strategies as st
import oracles
import pytest
import torch
from hypothesis import assume, given, settings
from torch import Tensor
from torch.testing import assert_close

from sinklens import ops
from sinklens.errors import SinkDimensionError

PROPERTY = settings(max_examples=60, deadline=None, database=None)
VAR_PROPERTY = settings(PROPERTY, max_examples=150)
UNIT = st.floats(0.0, 1.0)
# summ is mostly small in practice (default 0.2); leaning low makes more rows selected
SUMM = st.one_of(st.floats(0.0, 0.3), UNIT)
# hypothesis favours 0 and 1, where the edit is an identity in one convention or the other
P = st.one_of(st.floats(0.05, 0.95), UNIT)
CONVENTIONS = ("paper", "released")
# fp32 and the float64 oracle may decide differently when s or r lies this close to summ or rho
THRESHOLD_SLACK = 1e-5


def assert_matches_oracle(actual: Tensor, expected: Tensor, *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    assert_close(actual.double(), expected, atol=atol, rtol=rtol)


def bool_matrix(draw, n_rows: int, n_cols: int) -> Tensor:
    flat = draw(st.lists(st.booleans(), min_size=n_rows * n_cols, max_size=n_rows * n_cols))
    return torch.tensor(flat, dtype=torch.bool).reshape(n_rows, n_cols)


def softmax_rows(shape: tuple[int, ...], seed: int, *, sharpness: float, hidden: Tensor | None = None) -> Tensor:
    """Random attention rows; `hidden` keys get exactly zero (as under a causal mask)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * sharpness
    if hidden is not None:
        logits = logits.masked_fill(hidden, float("-inf"))
    return logits.softmax(-1)


@st.composite
def attention_rows(draw, *, max_keys: int = 8):
    """(rows [batch, head, query, key], image [batch, key], sink [batch, key], queries [batch, query])."""
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    n_queries, n_keys = draw(st.integers(1, 4)), draw(st.integers(2, max_keys))
    seed = draw(st.integers(0, 2**31 - 1))
    sharpness = draw(st.sampled_from([0.5, 2.0, 8.0]))
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = torch.rand(batch, heads, n_queries, n_keys, generator=generator) < draw(st.sampled_from([0.0, 0.3, 0.7]))
    # one key per row stays visible so softmax is defined
    always_visible = torch.randint(n_keys, (batch, heads, n_queries, 1), generator=generator)
    hidden.scatter_(-1, always_visible, False)
    rows = softmax_rows((batch, heads, n_queries, n_keys), seed, sharpness=sharpness, hidden=hidden)
    image, sink = bool_matrix(draw, batch, n_keys), bool_matrix(draw, batch, n_keys)
    queries = bool_matrix(draw, batch, n_queries)
    return rows, image, sink, queries


# --- 1. sink dimensions and sink tokens ---------------------------------------------------


@st.composite
def residual_streams(draw):
    batch, positions, d_model = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 12))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    resid = torch.randn(batch, positions, d_model, generator=generator) * draw(st.sampled_from([1e-3, 1.0, 100.0]))
    # a massive activation at one dimension, as on BOS and visual sinks
    massive_dim = draw(st.integers(0, d_model - 1))
    resid[..., massive_dim] *= draw(st.sampled_from([1.0, 1000.0]))
    dims = draw(st.lists(st.integers(0, d_model - 1), min_size=1, max_size=3))
    return resid, dims


@PROPERTY
@given(residual_streams())
def test_sink_dimension_value_matches_oracle(case):
    resid, dims = case
    assert_matches_oracle(ops.sink_dimension_value(resid, dims), oracles.sink_dimension_value(resid, dims))


@PROPERTY
@given(residual_streams())
def test_dimension_magnitudes_matches_oracle(case):
    resid, _ = case
    assert_matches_oracle(ops.dimension_magnitudes(resid), oracles.dimension_magnitudes(resid))


def test_sink_dimension_value_upcasts_half_precision_to_fp32():
    resid = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(0)).bfloat16()
    phi = ops.sink_dimension_value(resid, (3, 7))
    assert phi.dtype == torch.float32
    assert torch.equal(phi, ops.sink_dimension_value(resid.float(), (3, 7)))


def test_zero_residual_has_zero_phi():
    # eps keeps the RMS away from zero: 0 / sqrt(1e-6) = 0, not nan
    assert torch.equal(ops.sink_dimension_value(torch.zeros(1, 2, 4), (0,)), torch.zeros(1, 2))


def test_sink_mask_ties_paper_includes_released_excludes():
    phi = torch.tensor([[19.5, 20.0, 20.5]])
    assert ops.sink_mask(phi, 20.0).tolist() == [[False, True, True]]
    assert ops.sink_mask(phi, 20.0, strict=True).tolist() == [[False, False, True]]


# --- 2. visual non-sink ratio and image-centric heads --------------------------------------


@PROPERTY
@given(attention_rows())
def test_visual_nonsink_ratio_matches_oracle(case):
    rows, image, sink, _ = case
    ratio, image_attention = ops.visual_nonsink_ratio(rows, image, sink)
    expected_ratio, expected_attention = oracles.image_attention_and_ratio(rows, image, sink)
    assert_matches_oracle(ratio, expected_ratio)
    assert_matches_oracle(image_attention, expected_attention)


def selection_share(rows: Tensor, image: Tensor, sink: Tensor, convention: str) -> tuple[Tensor, Tensor]:
    """(share, s) as interventions/var.py computes them: r (paper) or the released code's q."""
    if convention == "released":
        return ops.visual_sink_share(rows, image, sink, eps_per_image_token=oracles.RELEASED_EPS_PER_IMAGE_TOKEN)
    return ops.visual_nonsink_ratio(rows, image, sink)


@VAR_PROPERTY
@given(attention_rows(), UNIT, SUMM, st.sampled_from(CONVENTIONS))
def test_image_centric_matches_oracle(case, rho, summ, convention):
    rows, image, sink, _ = case
    share, image_attention = selection_share(rows, image, sink, convention)
    expected_share, expected_attention = oracles.selection_share(rows, image, sink, convention=convention)
    closest = min(
        oracles.threshold_distance(q, s, rho=rho, summ=summ)
        for q, s in zip(expected_share.flatten().tolist(), expected_attention.flatten().tolist(), strict=True)
    )
    assume(closest > THRESHOLD_SLACK)
    selected = ops.image_centric(share, image_attention, rho=rho, summ=summ, sink_share=convention == "released")
    expected = oracles.image_centric(expected_share, expected_attention, rho=rho, summ=summ, convention=convention)
    assert torch.equal(selected, expected)


def test_image_centric_ties_are_selected_in_both_conventions():
    ratio = torch.tensor([[[0.25, 0.25, 0.75]]])
    image_attention = torch.tensor([[[0.5, 0.4999, 0.5]]])
    # paper: r >= rho and s >= summ (0.75 and 0.5 are exact in fp32, so these are true ties)
    assert ops.image_centric(ratio, image_attention, rho=0.75, summ=0.5).tolist() == [[[False, False, True]]]
    # released: the visual-sink share q <= rho (here the shares are q = 0.25, 0.25, 0.75)
    released = ops.image_centric(ratio, image_attention, rho=0.75, summ=0.5, sink_share=True)
    assert released.tolist() == [[[True, False, True]]]


def test_ratio_of_a_row_without_image_attention_is_zero():
    rows = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    image = torch.tensor([[False, True, True]])
    sink = torch.tensor([[False, True, False]])
    ratio, image_attention = ops.visual_nonsink_ratio(rows, image, sink)
    assert ratio.item() == 0.0 and image_attention.item() == 0.0
    for eps in (0.0, 1e-6):
        share, image_attention = ops.visual_sink_share(rows, image, sink, eps_per_image_token=eps)
        assert share.item() == 0.0 and image_attention.item() == 0.0


def test_released_share_denominator_adds_eps_per_image_token():
    rows = torch.tensor([[[[0.2, 0.3, 0.5]]]])
    image = torch.tensor([[False, True, True]])
    sink = torch.tensor([[False, True, False]])
    share, _ = ops.visual_sink_share(rows, image, sink, eps_per_image_token=1e-3)
    assert_close(share, torch.tensor([[[0.3 / (0.8 + 2e-3)]]]), atol=1e-7, rtol=0)


def test_mean_head_ratio_averages_over_the_chosen_queries_only():
    ratio = torch.tensor([[[0.2, 0.4, 0.9], [1.0, 0.0, 0.5]]])
    queries = torch.tensor([[True, True, False]])
    assert_close(ops.mean_head_ratio(ratio, queries), torch.tensor([[0.3, 0.5]]), atol=1e-7, rtol=0)


# --- 3. redistribution and the VAR row edit ---------------------------------------------------


def var_edit(
    rows: Tensor, image: Tensor, sink: Tensor, queries: Tensor, *, p: float, rho: float, summ: float, convention: str
) -> tuple[Tensor, Tensor]:
    """(edited rows, selection): VAR's own row edit, the function its hook calls (interventions/var.py)."""
    from sinklens.interventions.var import edit_rows

    return edit_rows(rows, image, sink, queries, p=p, rho=rho, summ=summ, released=convention == "released")


@PROPERTY
@given(attention_rows(), P, st.data())
def test_redistribute_matches_oracle(case, keep, data):
    rows, image, sink, _ = case
    selected = bool_matrix(data.draw, rows.shape[0], rows.shape[1] * rows.shape[2]).reshape(rows.shape[:3])
    target = image & ~sink
    actual = ops.redistribute(rows, sink, target, selected, keep=keep)
    assert_matches_oracle(actual, oracles.redistribute(rows, sink, target, selected, keep=keep))


def test_redistribute_worked_example():
    # sink 0.5 keeps 0.4 -> 0.2; budget 0.3 split 1:3 over targets 0.1 and 0.3
    rows = torch.tensor([[[[0.5, 0.1, 0.3, 0.1]]]])
    sink = torch.tensor([[True, False, False, False]])
    target = torch.tensor([[False, True, True, False]])
    out = ops.redistribute(rows, sink, target, torch.ones(1, 1, 1, dtype=torch.bool), keep=0.4)
    assert_close(out, torch.tensor([[[[0.2, 0.175, 0.525, 0.1]]]]), atol=1e-7, rtol=0)


# a subnormal target mass once lost most of the budget (it was clamped to finfo.tiny)
@pytest.mark.parametrize(("dtype", "target_attention"), [(torch.float32, 1e-40), (torch.float16, 3e-5)])
def test_redistribute_keeps_row_sum_when_target_mass_is_subnormal(dtype, target_attention):
    rows = torch.tensor([[[[0.5, target_attention, 0.5]]]], dtype=dtype)
    sink = torch.tensor([[True, False, False]])
    target = torch.tensor([[False, True, False]])
    out = ops.redistribute(rows, sink, target, torch.ones(1, 1, 1, dtype=torch.bool), keep=0.0)
    assert_close(out.float().sum(-1), rows.float().sum(-1), atol=1e-3, rtol=0)


@VAR_PROPERTY
@given(attention_rows(), P, UNIT, SUMM, st.sampled_from(CONVENTIONS))
def test_var_edit_matches_oracle(case, p, rho, summ, convention):
    rows, image, sink, queries = case
    params = dict(rho=rho, summ=summ, convention=convention)
    expected_selected, closest = oracles.var_selection(rows, image, sink, queries, **params)
    assume(closest > THRESHOLD_SLACK)
    actual, selected = var_edit(rows, image, sink, queries, p=p, **params)
    assert torch.equal(selected, expected_selected)
    assert_matches_oracle(actual, oracles.var_rows(rows, image, sink, queries, p=p, **params))


@VAR_PROPERTY
@given(attention_rows(), P, UNIT, SUMM, st.sampled_from(CONVENTIONS))
def test_var_edit_keeps_row_sums_and_sign_and_leaves_unselected_rows(case, p, rho, summ, convention):
    rows, image, sink, queries = case
    out, selected = var_edit(rows, image, sink, queries, p=p, rho=rho, summ=summ, convention=convention)
    assert_close(out.sum(-1), rows.sum(-1), atol=1e-6, rtol=0)
    assert (out >= 0).all()
    assert torch.equal(out[~selected], rows[~selected])


@VAR_PROPERTY
@given(attention_rows(), UNIT, SUMM)
def test_var_paper_with_p_zero_is_an_exact_identity(case, rho, summ):
    rows, image, sink, queries = case
    out, _ = var_edit(rows, image, sink, queries, p=0.0, rho=rho, summ=summ, convention="paper")
    assert torch.equal(out, rows)


@PROPERTY
@given(attention_rows(), P)
def test_redistribute_leaves_rows_with_no_attention_on_targets(case, keep):
    rows, image, sink, _ = case
    target = image & ~sink
    # key 0 stays visible (and is no target) so that the targets get exactly zero attention
    assume(not target[:, 0].any())
    hidden = target[:, None, None, :].expand(rows.shape).clone()
    rows = softmax_rows(tuple(rows.shape), seed=0, sharpness=2.0, hidden=hidden)
    everything = torch.ones(rows.shape[:3], dtype=torch.bool)
    assert torch.equal(ops.redistribute(rows, sink, target, everything, keep=keep), rows)


def test_released_selects_nothing_without_a_visual_sink():
    # key 0 is a text sink (BOS); the image keys 1..3 hold no sink
    rows = torch.tensor([[[[0.6, 0.1, 0.2, 0.1]]]])
    image = torch.tensor([[False, True, True, True]])
    sink = torch.tensor([[True, False, False, False]])
    queries = torch.ones(1, 1, dtype=torch.bool)
    params = dict(p=0.6, rho=1.0, summ=0.0)
    released, _ = var_edit(rows, image, sink, queries, convention="released", **params)
    paper, _ = var_edit(rows, image, sink, queries, convention="paper", **params)
    assert torch.equal(released, rows)
    # the paper recycles the BOS mass into the image: BOS keeps 1 - p
    assert_matches_oracle(paper, oracles.var_rows(rows, image, sink, queries, convention="paper", **params))
    assert paper[0, 0, 0, 0].item() == pytest.approx(0.24)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_var_hook_matches_oracle(convention):
    """The real hook in interventions/var.py against the oracle, on one prefill pattern."""
    from sinklens.interventions import VAR
    from sinklens.models.spans import ImageSpans
    from sinklens.run import Findings, RunContext, RunSpec

    n_pos, layer = 8, 2
    image = torch.zeros(1, n_pos, dtype=torch.bool)
    image[0, 1:5] = True
    sink = torch.zeros(1, n_pos, dtype=torch.bool)
    sink[0, [0, 2]] = True  # BOS and one visual sink
    causal_hidden = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1).expand(1, 4, n_pos, n_pos)
    pattern = softmax_rows((1, 4, n_pos, n_pos), seed=3, sharpness=1.0, hidden=causal_hidden)
    everywhere = torch.ones(1, n_pos, dtype=torch.bool)
    ctx = RunContext(RunSpec.of(ImageSpans(mask=image), everywhere, n_layers=4), found=Findings(sinks={layer: sink}))
    var = VAR(p=0.6, rho=0.5, summ=0.2, convention=convention)
    (hook,) = [hook for hook in var.hooks(ctx) if hook.name == f"blocks.{layer}.attn.hook_pattern"]
    out = hook.fn(pattern.clone(), ctx)
    text_queries = torch.arange(n_pos)[None, :] >= 5
    expected = oracles.var_rows(pattern, image, sink, text_queries, p=0.6, rho=0.5, summ=0.2, convention=convention)
    assert ctx.records["var"][0]["n_image_centric"] > 0
    assert_matches_oracle(out, expected)


# --- 4. key masking -------------------------------------------------------------------------


def hf_causal_scores(raw: Tensor, left_padding: list[int]) -> Tensor:
    """Scores plus an HF-style additive mask: 0 where visible, finfo.min on future and padding keys."""
    n_pos = raw.shape[-1]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    not_padding = torch.arange(n_pos)[None, :] >= torch.tensor(left_padding)[:, None]
    allowed = causal[None, None] & not_padding[:, None, None, :]
    additive = torch.zeros(allowed.shape, dtype=raw.dtype).masked_fill(~allowed, torch.finfo(raw.dtype).min)
    return raw + additive


@st.composite
def masking_problems(draw):
    batch, heads, n_pos = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 6))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    raw = torch.randn(batch, heads, n_pos, n_pos, generator=generator)
    padding = draw(st.lists(st.integers(0, n_pos - 1), min_size=batch, max_size=batch))
    scores = hf_causal_scores(raw, padding)
    return scores, bool_matrix(draw, batch, n_pos), bool_matrix(draw, batch, n_pos)


@PROPERTY
@given(masking_problems())
def test_mask_keys_matches_oracle(case):
    scores, keys, queries = case
    assert torch.equal(ops.mask_keys(scores, keys, queries), oracles.mask_keys(scores, keys, queries))


@PROPERTY
@given(masking_problems())
def test_masked_softmax_zeroes_keys_and_exempts_queries_left_blind(case):
    scores, keys, queries = case
    masked = ops.mask_keys(scores, keys, queries)
    pattern = masked.softmax(-1)
    visible = scores > torch.finfo(scores.dtype).min / 2
    chosen_rows = queries[:, None, :].expand(scores.shape[:3])
    exempt = chosen_rows & ~(visible & ~keys[:, None, None, :]).any(-1)
    acted = chosen_rows & ~exempt
    assert_close(pattern.sum(-1), torch.ones(scores.shape[:3]), atol=1e-6, rtol=0)
    removed = acted[..., None] & keys[:, None, None, :]
    assert (pattern[removed] == 0).all()
    assert torch.equal(masked[~acted], scores[~acted])


def test_mask_keys_exempts_the_first_query_that_sees_only_bos():
    scores = hf_causal_scores(torch.zeros(1, 1, 3, 3), [0])
    keys = torch.tensor([[True, False, False]])
    queries = torch.ones(1, 3, dtype=torch.bool)
    pattern = ops.mask_keys(scores, keys, queries).softmax(-1)
    assert_close(pattern[0, 0], torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]]), atol=1e-7, rtol=0)


def test_mask_keys_counts_scores_near_the_dtype_minimum_as_hidden():
    # in fp16, 20 + finfo.min rounds to -65472, not to the minimum itself
    scores = hf_causal_scores(torch.full((1, 1, 3, 3), 20.0, dtype=torch.float16), [0])
    assert scores[0, 0, 0, 1].item() == -65472.0
    keys = torch.tensor([[True, False, False]])
    queries = torch.ones(1, 3, dtype=torch.bool)
    masked = ops.mask_keys(scores, keys, queries)
    assert torch.equal(masked, oracles.mask_keys(scores, keys, queries))
    assert torch.equal(masked[0, 0, 0], scores[0, 0, 0])  # query 0 sees only key 0: exempt


# --- 5. attention contribution --------------------------------------------------------------


def gqa_problem(n_heads: int, n_kv: int) -> tuple[Tensor, Tensor, Tensor]:
    """(pattern, value, w_o) with HF layouts: value [batch, kv_head, key, d_head], w_o [d_model, head*d_head]."""
    batch, n_queries, n_keys, d_head, d_model = 2, 3, 4, 3, 5
    generator = torch.Generator().manual_seed(n_heads * 10 + n_kv)
    value = torch.randn(batch, n_kv, n_keys, d_head, generator=generator)
    w_o = torch.randn(d_model, n_heads * d_head, generator=generator)
    pattern = softmax_rows((batch, n_heads, n_queries, n_keys), seed=n_kv, sharpness=1.0)
    return pattern, value, w_o


def hf_attention_output(pattern: Tensor, value: Tensor, w_o: Tensor) -> Tensor:
    """What HF eager attention computes: repeat_kv, pattern @ V, heads concatenated, then o_proj."""
    batch, n_kv, n_keys, d_head = value.shape
    n_heads = pattern.shape[1]
    repeated = value[:, :, None].expand(batch, n_kv, n_heads // n_kv, n_keys, d_head)
    repeated = repeated.reshape(batch, n_heads, n_keys, d_head)
    per_head = pattern @ repeated
    concatenated = per_head.transpose(1, 2).reshape(batch, pattern.shape[2], n_heads * d_head)
    return concatenated @ w_o.T


GQA_SHAPES = [(8, 2), (4, 4), (4, 1)]


@pytest.mark.parametrize(("n_heads", "n_kv"), GQA_SHAPES)
def test_head_value_outputs_matches_oracle(n_heads, n_kv):
    _, value, w_o = gqa_problem(n_heads, n_kv)
    actual = ops.head_value_outputs(value, w_o, n_heads)
    assert_matches_oracle(actual, oracles.head_value_outputs(value, w_o, n_heads), atol=1e-5)


@pytest.mark.parametrize(("n_heads", "n_kv"), GQA_SHAPES)
def test_attention_contribution_matches_oracle(n_heads, n_kv):
    pattern, value, w_o = gqa_problem(n_heads, n_kv)
    actual = ops.attention_contribution(pattern, ops.head_value_outputs(value, w_o, n_heads))
    assert_matches_oracle(actual, oracles.attention_contribution(pattern, value, w_o), atol=1e-5)


@pytest.mark.parametrize(("n_heads", "n_kv"), GQA_SHAPES)
def test_contribution_vectors_sum_to_the_attention_output(n_heads, n_kv):
    pattern, value, w_o = gqa_problem(n_heads, n_kv)
    value_outputs = ops.head_value_outputs(value, w_o, n_heads)
    vectors = pattern[..., None] * value_outputs[:, :, None]  # [batch, head, query, key, d_model]
    assert_close(vectors.sum(dim=(1, 3)), hf_attention_output(pattern, value, w_o), atol=1e-5, rtol=1e-5)


def test_head_value_outputs_rejects_uneven_gqa():
    _, value, w_o = gqa_problem(6, 4)
    with pytest.raises(ValueError, match="evenly"):
        ops.head_value_outputs(value, w_o, 6)


def test_phi_of_no_dimension_is_refused():
    with pytest.raises(SinkDimensionError, match="dims is empty"):
        ops.sink_dimension_value(torch.ones(1, 2, 4), ())


@pytest.mark.parametrize("dims", [(99999,), (-1,), (0, 4)])
def test_phi_of_a_dimension_the_stream_lacks_is_refused_naming_the_range(dims):
    with pytest.raises(SinkDimensionError, match="dimensions 0..3"):
        ops.sink_dimension_value(torch.ones(1, 2, 4), dims)


@pytest.mark.skipif(os.environ.get("SINKLENS_NO_SHAPE_CHECKS") == "1", reason="this session runs without shape checks")
def test_the_suite_checks_the_shapes_the_ops_declare():
    """conftest.py installs jaxtyping's checker over the ops: a tensor of the wrong rank is refused."""
    from jaxtyping import TypeCheckError

    from sinklens.ops import sink_dimension_value

    with pytest.raises(TypeCheckError):
        sink_dimension_value(torch.ones(3, 4), (1,))  # [pos, d_model]: the batch axis is missing
