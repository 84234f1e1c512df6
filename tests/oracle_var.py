"""An independent VAR oracle: a hand-written eager attention with a loop over rows.

Registered through transformers' public `AttentionInterface` and used by a
second, identically built tiny model, so the oracle shares no code with
sinklens' ops, interventions, spans or nnsight backend. Arithmetic is in Python
floats (double precision), one (batch, head, query) row at a time, straight
from SPEC sections 1-3 and 5.

It handles GQA (key/value heads repeated to the query heads), batches with left
padding (padding is never a sink, each example has its own image tokens, sinks
and first text query) and multimodal rotary positions (Qwen2-VL computes them
outside attention, so the attention here is unchanged). The image tokens are
read off the model itself: the placeholder positions of the input ids, less the
positions where the language model receives LLaVA-NeXT's image-newline vector.
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
    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    image_token_id: int
    tau: float = 20.0
    p: float = 0.6
    rho: float = 0.8
    summ: float = 0.2
    convention: str = "paper"
    heads: str = "image_centric"  # or "all": every text query of every head, no selection
    destination: str = "image"  # keys that receive the budget: "image", "text" or "both" (never sinks)
    layers: tuple[int, ...] = ()
    image_positions: list[list[int]] = field(default_factory=list)
    first_query: list[int] = field(default_factory=list)
    sinks: dict[int, list[list[int]]] = field(default_factory=dict)
    n_selected: int = 0
    # (layer, share, s) of every row whose selection rho decides: share is r (paper) or q (released)
    shares: list[tuple[int, float, float]] = field(default_factory=list)

    @classmethod
    def for_prompt(cls, inputs, image_token_id: int, **params) -> OracleVAR:
        """An oracle for `inputs` whose image tokens are known up front (for installs that do not read them)."""
        ids = inputs["input_ids"].tolist()
        oracle = cls(input_ids=ids, attention_mask=inputs["attention_mask"].tolist(), image_token_id=image_token_id,
                     **params)  # fmt: skip
        oracle.image_positions = [[j for j, t in enumerate(row) if t == image_token_id] for row in ids]
        oracle.first_query = [max(positions) + 1 for positions in oracle.image_positions]
        return oracle

    # the sequence length so far (prompt, then one more per decoding step): a sliding-window layer's keys are its
    # last positions
    length: int = 0

    # -- the image tokens of each example, from what the language model receives on the prompt
    def read_images(self, inputs_embeds: torch.Tensor, newline: torch.Tensor | None) -> None:
        if inputs_embeds.shape[1] == 1:  # a decoding step
            self.length += 1
            return
        self.length = inputs_embeds.shape[1]
        self.image_positions, self.first_query = [], []
        for b, ids in enumerate(self.input_ids):
            region = [j for j, token in enumerate(ids) if token == self.image_token_id]
            if newline is not None:
                region_newlines = {j for j in region if torch.equal(inputs_embeds[b, j], newline)}
            else:
                region_newlines = set()
            self.image_positions.append([j for j in region if j not in region_newlines])
            self.first_query.append(max(region) + 1)

    # -- sinks, from the residual stream entering each layer, on the prompt only
    def find_sinks(self, layer: int, hidden: torch.Tensor) -> None:
        if hidden.shape[1] == 1:  # a decoding step: keep the prompt's sink sets
            return
        self.sinks[layer] = []
        for b, rows in enumerate(hidden.tolist()):
            found = []
            for j, x in enumerate(rows):
                if not self.attention_mask[b][j]:
                    continue  # padding is never a sink
                rms = math.sqrt(sum(v * v for v in x) / len(x) + 1e-6)
                phi = max(abs(x[d]) for d in self.dims) / rms
                if (phi > self.tau) if self.convention == "released" else (phi >= self.tau):
                    found.append(j)
            self.sinks[layer].append(found)

    # -- the edit of one attention pattern, row by row
    def edit(self, layer: int, probs: torch.Tensor) -> torch.Tensor:
        if layer not in self.layers:
            return probs
        out = probs.clone()
        n_queries, n_keys = probs.shape[-2:]
        hidden = self.length - n_keys  # positions before a sliding window's keys: no attention there
        for b in range(probs.shape[0]):
            first = self.first_query[b] if n_queries > 1 else 0
            for h in range(probs.shape[1]):
                for i in range(first, n_queries):
                    new = self.edit_row(layer, b, [0.0] * hidden + probs[b, h, i].tolist())
                    if new is not None:
                        out[b, h, i] = torch.tensor(new[hidden:], dtype=probs.dtype)
        return out

    def edit_row(self, layer: int, b: int, row: list[float]) -> list[float] | None:
        released = self.convention == "released"
        sink = set(self.sinks[layer][b])
        image = set(self.image_positions[b])
        s = sum(row[j] for j in image)
        if released:  # HeadFork: visual-sink mass / sum(image attention + 1e-6), kept when <= rho (SPEC 5.1)
            share = sum(row[j] for j in image & sink) / sum(row[j] + 1e-6 for j in image)
            centric = share <= self.rho
        else:  # SPEC 2: non-sink image mass / image mass, kept when >= rho
            share = sum(row[j] for j in image - sink) / s if s > 0 else 0.0
            centric = share >= self.rho
        if s >= self.summ and (sink & image or not released):  # rows that rho decides
            self.shares.append((layer, share, s))
        if self.heads == "image_centric":
            if not (s >= self.summ and centric):
                return None
            if released and not sink & image:
                return None
        text = set(range(len(row))) - image
        targets = {"image": image, "text": text, "both": image | text}[self.destination] - sink
        target_mass = sum(row[j] for j in targets)
        if target_mass <= 0:
            return None
        keep = self.p if released else 1 - self.p
        budget = (1 - keep) * sum(row[j] for j in sink)
        new = list(row)
        for j in sink:
            new[j] = keep * row[j]
        for j in targets:
            new[j] = row[j] + budget * row[j] / target_mass
        self.n_selected += 1
        return new


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


def language_model(model):
    """The text model inside an HF LMM (`model.text_model` in SmolVLM, `model.language_model` elsewhere)."""
    inner = model.model
    return inner.text_model if hasattr(inner, "text_model") else inner.language_model


def install(model, oracle: OracleVAR) -> None:
    """Make `model`'s language model run the oracle (the vision tower stays eager)."""
    text_model = language_model(model)
    text_model.config._attn_implementation = "sinklens_oracle"
    newline = getattr(model.model, "image_newline", None)

    def read(module, args, kwargs):
        oracle.read_images(kwargs["inputs_embeds"], None if newline is None else newline.detach())

    text_model.register_forward_pre_hook(read, with_kwargs=True)
    for layer_index, layer in enumerate(text_model.layers):
        layer.self_attn._sinklens_oracle = oracle

        def find(module, args, kwargs, layer_index=layer_index):
            hidden = args[0] if args else kwargs["hidden_states"]
            oracle.find_sinks(layer_index, hidden)

        layer.register_forward_pre_hook(find, with_kwargs=True)
