"""An independent VAR oracle: a hand-written eager attention with a loop over rows.

Registered through transformers' public `AttentionInterface` and used by a
second, identically built tiny model, so the oracle shares no code with
sinklens' ops, interventions or nnsight backend. Arithmetic is in Python floats
(double precision), one (batch, head, query) row at a time, straight from
SPEC sections 1-3 and 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask


@dataclass
class OracleVAR:
    dims: tuple[int, ...]
    image_positions: list[int]
    tau: float = 20.0
    p: float = 0.6
    rho: float = 0.8
    summ: float = 0.2
    convention: str = "paper"
    layers: tuple[int, ...] = ()
    sinks: dict[int, list[int]] = field(default_factory=dict)
    n_selected: int = 0

    # -- sinks, from the residual stream entering each layer, on the prompt only
    def find_sinks(self, layer: int, hidden: torch.Tensor) -> None:
        if hidden.shape[1] == 1:  # a decoding step: keep the prompt's sink sets
            return
        found = []
        for j, x in enumerate(hidden[0].tolist()):
            rms = math.sqrt(sum(v * v for v in x) / len(x) + 1e-6)
            phi = max(abs(x[d]) for d in self.dims) / rms
            if (phi > self.tau) if self.convention == "released" else (phi >= self.tau):
                found.append(j)
        self.sinks[layer] = found

    # -- the edit of one attention pattern, row by row
    def edit(self, layer: int, probs: torch.Tensor) -> torch.Tensor:
        if layer not in self.layers:
            return probs
        released = self.convention == "released"
        sink = set(self.sinks[layer])
        image = set(self.image_positions)
        n_queries, n_keys = probs.shape[-2:]
        prefill = n_queries > 1
        first_query = max(self.image_positions) + 1 if prefill else 0
        visual_sinks = sink & image
        out = probs.clone()
        for h in range(probs.shape[1]):
            for i in range(first_query, n_queries):
                row = probs[0, h, i].tolist()
                s = sum(row[j] for j in image)
                nonsink = sum(row[j] for j in image - sink)
                denominator = s + 1e-6 * len(image) if released else s
                r = nonsink / denominator if denominator > 0 else 0.0
                centric = (1 - r) <= self.rho if released else r >= self.rho
                if not (s >= self.summ and centric):
                    continue
                if released and not visual_sinks:
                    continue
                if nonsink <= 0:
                    continue
                keep = self.p if released else 1 - self.p
                budget = (1 - keep) * sum(row[j] for j in sink)
                new = list(row)
                for j in sink:
                    new[j] = keep * row[j]
                for j in image - sink:
                    new[j] = row[j] + budget * row[j] / nonsink
                self.n_selected += 1
                out[0, h, i] = torch.tensor(new, dtype=probs.dtype)
        return out


def oracle_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention written out, with the oracle's edit after the fp32 softmax."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = module._sinklens_oracle.edit(module.layer_idx, probs)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


AttentionInterface.register("sinklens_oracle", oracle_attention)
# the oracle adds its mask to the scores, as eager attention does
AttentionMaskInterface.register("sinklens_oracle", eager_mask)


def install(model, oracle: OracleVAR) -> None:
    """Make `model`'s language model run the oracle (the vision tower stays eager)."""
    model.config.text_config._attn_implementation = "sinklens_oracle"
    for layer_index, layer in enumerate(model.model.language_model.layers):
        layer.self_attn._sinklens_oracle = oracle

        def find(module, args, kwargs, layer_index=layer_index):
            hidden = args[0] if args else kwargs["hidden_states"]
            oracle.find_sinks(layer_index, hidden)

        layer.register_forward_pre_hook(find, with_kwargs=True)
