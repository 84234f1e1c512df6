"""The rows route's attention function against transformers' eager attention (the oracle).

At the op level: random shapes (MHA and GQA), a KV cache or none, left padding,
sdpa's mask (None where a causal mask is enough), any first explicit row. The
output must equal `eager_attention_forward`'s within 1e-5 (fp32) on every row,
and the scores and pattern nnsight reads inside the function (`.source`) must
equal eager's rows. On the tiny built-ins: the language model switched to the
rows route gives eager's logits, and the three named operations are live.
"""

from __future__ import annotations

import hypothesis.strategies as st
import nnsight
import pytest
import torch
from hypothesis import given, settings
from torch import nn
from torch.testing import assert_close
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, eager_attention_forward

from conftest import ARCHS, QUESTION, max_diff
from sinklens.models import load
from sinklens.hf.rows_attention import FIRST_ROW, ROWS, ROWS_OPS, register, rows_attention_forward, use_rows
from sinklens.builtin import demo_scene

PROPERTY = settings(max_examples=60, deadline=None, database=None)


class Call(nn.Module):
    """Calls the rows function as an attention module does, so nnsight's `.source` can reach inside it."""

    def __init__(self, attention: LlamaAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, query, key, value, mask, first):
        attention_interface = rows_attention_forward
        return attention_interface(
            self.attention, query, key, value, mask, scaling=self.attention.scaling, sinklens_first_row=first
        )


@st.composite
def attention_case(draw):
    """(module, query, key, value, sdpa-style mask or None, eager's additive mask, first row)."""
    kv_heads, groups = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2, 3]))
    head_dim, batch = draw(st.sampled_from([4, 8])), draw(st.integers(1, 3))
    n_queries, cached = draw(st.integers(1, 9)), draw(st.sampled_from([0, 0, 1, 4]))
    n_keys = cached + n_queries
    pads = [draw(st.integers(0, n_keys - 1)) for _ in range(batch)] if draw(st.booleans()) else [0] * batch
    first = draw(st.integers(0, n_queries))
    seed = draw(st.integers(0, 2**31 - 1))
    config = LlamaConfig(hidden_size=kv_heads * groups * head_dim, num_attention_heads=kv_heads * groups,
                         num_key_value_heads=kv_heads, head_dim=head_dim)  # fmt: skip
    module = LlamaAttention(config, layer_idx=0).eval()
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, kv_heads * groups, n_queries, head_dim, generator=generator) * 2
    key = torch.randn(batch, kv_heads, n_keys, head_dim, generator=generator) * 2
    value = torch.randn(batch, kv_heads, n_keys, head_dim, generator=generator)
    positions = torch.arange(cached, n_keys)
    seen = torch.arange(n_keys)[None, :] <= positions[:, None]  # causal, [query, key]
    not_padding = torch.arange(n_keys)[None, :] >= torch.tensor(pads)[:, None]  # [batch, key]
    full = seen[None, None] & not_padding[:, None, None]  # [batch, 1, query, key]
    # sdpa's mask: None when the causal mask is enough (no padding, no cache or one query), else boolean
    none_ok = not any(pads) and (cached == 0 or n_queries == 1)
    sdpa_mask = None if none_ok and draw(st.booleans()) else full
    additive = torch.where(full, 0.0, torch.finfo(torch.float32).min)
    return module, query, key, value, sdpa_mask, additive, first


@PROPERTY
@given(attention_case())
def test_rows_route_gives_eager_output_and_eager_rows(case):
    module, query, key, value, mask, additive, first = case
    expected, eager_pattern = eager_attention_forward(module, query, key, value, additive, scaling=module.scaling)
    with torch.no_grad():
        got, weights = rows_attention_forward(module, query, key, value, mask, scaling=module.scaling, sinklens_first_row=first)
    assert weights is None  # never a partial pattern handed out as the model's attentions
    assert got.shape == expected.shape
    # a query that sees no key (a padding position) is sdpa's zeros in the sdpa rows and eager's
    # uniform row in the explicit ones: its output reaches no real token, so it is not compared
    sees = (additive == 0).any(-1)[:, 0].clone()  # [batch, query]
    sees[:, first:] = True
    diff = max_diff(got[sees], expected[sees])
    assert diff <= 1e-5, f"first row {first}: max diff {diff}"
    if first == query.shape[2]:
        return  # no explicit row: nothing for .source to read
    call = nnsight.NNsight(Call(module))
    scaled = torch.matmul(query, key.repeat_interleave(query.shape[1] // key.shape[1], 1).transpose(2, 3)) * module.scaling
    with torch.no_grad(), call.trace(query, key, value, mask, first):
        ops = call.source.attention_interface_1.source
        scores = getattr(ops, ROWS_OPS["attn.hook_attn_scores"]).output.save()
        pattern = getattr(ops, ROWS_OPS["attn.hook_pattern"]).output.save()
    assert_close(scores, (scaled + additive)[:, :, first:], atol=1e-5, rtol=1e-5)
    assert_close(pattern, eager_pattern[:, :, first:], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("first", [1, 2, 4])
def test_no_mask_with_a_cache_means_causal_from_the_last_keys(first):
    """Without a mask the rows are causal at their true positions (after the cache), in both parts."""
    config = LlamaConfig(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    module = LlamaAttention(config, layer_idx=0).eval()
    query, key, value = torch.randn(2, 4, 5, 4), torch.randn(2, 2, 8, 4), torch.randn(2, 2, 8, 4)
    seen = torch.arange(8)[None, :] <= torch.arange(3, 8)[:, None]
    additive = torch.where(seen, 0.0, torch.finfo(torch.float32).min)[None, None]
    expected, _ = eager_attention_forward(module, query, key, value, additive, scaling=0.5)
    got, _ = rows_attention_forward(module, query, key, value, None, scaling=0.5, sinklens_first_row=first)
    assert max_diff(got, expected) <= 1e-5


@pytest.mark.parametrize("first", [0, 3])
def test_dropout_follows_the_modules_training_flag(first):
    """Eager drops pattern entries only in training; p = 1 drops every one, in both routes."""
    config = LlamaConfig(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=4)
    module = LlamaAttention(config, layer_idx=0)
    query, key, value = torch.randn(1, 4, 6, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    module.train()
    got, _ = rows_attention_forward(module, query, key, value, None, scaling=0.5, dropout=1.0, sinklens_first_row=first)
    expected, _ = eager_attention_forward(module, query, key, value, None, scaling=0.5, dropout=1.0)
    assert torch.equal(got[:, first:], expected[:, first:]) and not got[:, first:].any()
    module.eval()
    kept, _ = rows_attention_forward(module, query, key, value, None, scaling=0.5, dropout=1.0, sinklens_first_row=first)
    assert kept[:, first:].abs().sum() > 0


def test_registering_adds_a_name_and_nothing_else():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    register()
    register()  # idempotent
    assert AttentionInterface()[ROWS] is rows_attention_forward
    assert AttentionMaskInterface()[ROWS] is AttentionMaskInterface()["sdpa"]
    assert AttentionInterface()["sdpa"] is not rows_attention_forward


# ---- on the tiny built-ins ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(ARCHS))
def both_routes(request):
    """(eager model, rows-route model, inputs) of one tiny built-in (two loads of the same weights)."""
    eager, rows = load(request.param), load(request.param)
    use_rows(rows.model, rows.catalogue.text_config_field)
    return eager, rows, eager.prepare(demo_scene(request.param), QUESTION)


def test_rows_route_without_rows_is_sdpa_and_gives_eagers_logits(both_routes):
    eager, rows, inputs = both_routes
    assert rows.text_config._attn_implementation == ROWS
    with torch.no_grad():
        diff = max_diff(eager.model(**inputs).logits, rows.model(**inputs).logits)
    assert diff <= 1e-5, f"max logit diff {diff}"


def test_named_operations_are_live_and_hold_eagers_rows(both_routes):
    """values_0, scores_1 and pattern_0 read what eager's hook points hold, and a write there reaches the logits."""
    eager, rows, inputs = both_routes
    call_path = rows.catalogue.rows_call(1)  # layer 1's attention call, the same path on both routes
    first = int(eager.check_inputs(inputs).text_start.min())
    model_eager, model_rows = nnsight.NNsight(eager.model), nnsight.NNsight(rows.model)

    def at(root, layer):
        node = root
        for part in call_path.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node

    # the eager operations the catalogue names (Gemma 3's pattern is attn_weights_5)
    names = {point: eager.catalogue.nnsight[point].split(".source.")[-1].rsplit(".", 1)[0]
             for point in ("attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern")}  # fmt: skip
    with torch.no_grad(), model_eager.trace(**inputs):
        eager_ops = at(model_eager, 1).source
        values = getattr(eager_ops, names["attn.hook_v"]).input.save()
        scores = getattr(eager_ops, names["attn.hook_attn_scores"]).input.save()
        pattern = getattr(eager_ops, names["attn.hook_pattern"]).output.save()
    with torch.no_grad(), model_rows.trace(**inputs):
        call = at(model_rows, 1)
        args, kwargs = call.inputs
        call.inputs = (args, {**kwargs, FIRST_ROW: first})
        ops = call.source
        rows_values = getattr(ops, ROWS_OPS["attn.hook_v"]).output.save()
        rows_scores = getattr(ops, ROWS_OPS["attn.hook_attn_scores"]).output.save()
        rows_pattern = getattr(ops, ROWS_OPS["attn.hook_pattern"]).output.save()
        getattr(ops, ROWS_OPS["attn.hook_pattern"]).output = torch.full_like(rows_pattern, 1.0 / rows_pattern.shape[-1])
        edited = model_rows.output.logits.save()
    assert_close(rows_values, values)
    assert_close(rows_scores, scores[:, :, first:], atol=1e-5, rtol=1e-5)
    assert_close(rows_pattern, pattern[:, :, first:], atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        assert max_diff(edited, eager.model(**inputs).logits) > 1e-3  # the edit flowed into the output


# ---- loading ------------------------------------------------------------------------------------


def test_load_takes_the_rows_route_and_from_hf_recognises_it():
    from sinklens.models.loaded import from_hf

    lm = load("tiny-qwen2-vl", attention="rows")
    assert lm.attention == "rows"
    assert lm.text_config._attn_implementation == ROWS
    assert lm.config.vision_config._attn_implementation == "sdpa"
    assert from_hf(lm.model, lm.processor).attention == "rows"  # read off the model
    assert from_hf(lm.model, lm.processor, attention="eager").attention == "eager"  # switched back
    assert lm.text_config._attn_implementation == "eager"
    assert load("tiny-llava").attention == "eager"


def test_an_unknown_route_is_refused_before_loading():
    from sinklens.errors import ParameterError

    with pytest.raises(ParameterError, match="attention must be one of 'eager', 'rows', got 'sdpa'"):
        load("no-such-model", attention="sdpa")
