"""LoRA adapters: the trained wrapper, the shipped file and the merge on load compute the same model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sinklens.builtin import lora


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")  # fmt: skip
    return LlamaForCausalLM(config).eval()


def trained_adapter(model, rank=3, alpha=6.0, seed=1):
    """Wrap the attention projections and give B random values, as training would."""
    wrapped = lora.add_lora(model, ("self_attn.q_proj", "self_attn.v_proj"), rank, alpha)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in wrapped.values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator))
    return wrapped


def test_an_untrained_adapter_is_the_identity():
    base = tiny_llama()
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        before = base(ids).logits
        lora.add_lora(base, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"), 4, 8.0)
        assert torch.equal(base(ids).logits, before)


def test_merged_file_equals_the_wrapped_model(tmp_path):
    wrapped_model, plain = tiny_llama(), tiny_llama()
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    wrapped = trained_adapter(wrapped_model)
    lora.save_adapter(wrapped, tmp_path / "adapter.safetensors")
    adapter, scale = lora.load_adapter(tmp_path / "adapter.safetensors")
    assert scale == 2.0 and set(adapter) == {f"{p}.lora_{m}" for p in wrapped for m in "AB"}
    plain.load_state_dict(lora.merge_adapter(state, adapter, scale))
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert (plain(ids).logits - wrapped_model(ids).logits).abs().max() <= 1e-5
        assert (plain(ids).logits - tiny_llama()(ids).logits).abs().max() > 1e-3  # the adapter does something


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.floats(0.1, 4.0), st.integers(0, 10_000))
def test_merge_matches_a_sum_of_rank_one_updates(rank, n_out, n_in, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    weight, a, b = (torch.randn(shape, generator=generator, dtype=torch.float64)
                    for shape in ((n_out, n_in), (rank, n_in), (n_out, rank)))  # fmt: skip
    merged = lora.merge_adapter({"m.weight": weight, "other": a}, {"m.lora_A": a, "m.lora_B": b}, scale)
    expected = weight.clone()
    for r in range(rank):
        for i in range(n_out):
            for j in range(n_in):
                expected[i, j] += scale * b[i, r] * a[r, j]
    torch.testing.assert_close(merged["m.weight"], expected)
    assert merged["other"] is a


def test_bad_adapters_say_what_is_wrong(tmp_path):
    from safetensors.torch import save_file

    state = {"m.weight": torch.zeros(3, 4)}
    with pytest.raises(ValueError, match="only one of m.lora_A"):
        lora.merge_adapter(state, {"m.lora_A": torch.zeros(2, 4)}, 1.0)
    with pytest.raises(ValueError, match="adapts n, which the model does not have"):
        lora.merge_adapter(state, {"n.lora_A": torch.zeros(2, 4), "n.lora_B": torch.zeros(3, 2)}, 1.0)
    with pytest.raises(ValueError, match=r"adapter of m is 5 x 4, the weight \(3, 4\)"):
        lora.merge_adapter(state, {"m.lora_A": torch.zeros(2, 4), "m.lora_B": torch.zeros(5, 2)}, 1.0)
    save_file({"m.lora_A": torch.zeros(2, 4)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a sinklens LoRA adapter"):
        lora.load_adapter(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora.LoRALinear(torch.nn.Linear(4, 3), 0, 1.0)
    with pytest.raises(ValueError, match="no nn.Linear in the model ends with"):
        lora.add_lora(tiny_llama(), ("self_attn.qkv",), 2, 2.0)
