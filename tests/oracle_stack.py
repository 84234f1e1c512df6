"""An independent oracle for a stack: PAI, then softmax, then pattern edits in a given order.

A hand-written eager attention (registered through transformers' public
AttentionInterface, as in oracle_var.py) that applies, in the order the stack
documents: PAI's boost to the scores of image keys (a Python loop over
heads, queries and keys), the fp32 softmax, then each pattern edit of
`pattern_edits` in list order (VAR through OracleVAR, and plain functions
standing in for a user's hook). A user's residual-stream edit is a forward
hook on the decoder layer. Nothing here calls sinklens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from oracle_var import OracleVAR, language_model

PatternEdit = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, probs [1, head, q, k]) -> probs


@dataclass
class OracleStack:
    image_positions: list[int]
    pai_alpha: float = 0.0
    pai_layers: tuple[int, ...] = ()
    pattern_edits: list[PatternEdit] = field(default_factory=list)

    def boost(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        if layer not in self.pai_layers:
            return scores
        n_queries = scores.shape[-2]
        first_query = max(self.image_positions) + 1 if n_queries > 1 else 0
        out = scores.clone()
        for h in range(scores.shape[1]):
            for i in range(first_query, n_queries):
                row = scores[0, h, i].tolist()
                for j in self.image_positions:
                    row[j] = row[j] + self.pai_alpha * abs(row[j])
                out[0, h, i] = torch.tensor(row, dtype=scores.dtype)
        return out


def stack_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    oracle: OracleStack = module._sinklens_stack_oracle
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    scores = oracle.boost(module.layer_idx, scores)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    for edit in oracle.pattern_edits:
        probs = edit(module.layer_idx, probs)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


AttentionInterface.register("sinklens_stack_oracle", stack_attention)
AttentionMaskInterface.register("sinklens_stack_oracle", eager_mask)


def install(model, oracle: OracleStack, var: OracleVAR | None = None) -> None:
    """Run `oracle` in `model`'s language model; with `var`, find its sinks at every layer input."""
    model.config.text_config._attn_implementation = "sinklens_stack_oracle"
    for layer_index, layer in enumerate(language_model(model).layers):
        layer.self_attn._sinklens_stack_oracle = oracle
        if var is not None:

            def find(module, args, kwargs, layer_index=layer_index):
                hidden = args[0] if args else kwargs["hidden_states"]
                var.find_sinks(layer_index, hidden)

            layer.register_forward_pre_hook(find, with_kwargs=True)


def scale_layer_output(model, layer: int, factor: float) -> None:
    """A user's residual edit: multiply what decoder layer `layer` returns by `factor`."""

    def hook(module, args, output):
        return output * factor

    language_model(model).layers[layer].register_forward_hook(hook)
