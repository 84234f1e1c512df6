"""A prompt as its image prefix and its question: the model inputs of each, per architecture.

A prompt's *image prefix* is every token up to and including its last image
token, with the pixels of its images; its *suffix* is the rest (the question
and the chat template's tail). In a causal model the prefix's rows never see
the suffix, so prompts that share a prefix (one image, many questions) can
compute it once and continue each question from its cache
(`sinklens.run.prefixes` says when a stack allows it).

`split_prompts` cuts a batch of model inputs into `PromptParts` (the prefix's
own inputs, unpadded, and a key that is equal for equal prefixes), and
`continuation` lays a batch out to continue from cached prefixes:

    [left padding | prefix | padding | suffix]

every prefix right-aligned at the cache's end and every suffix at the batch's
end, the padding masked out; positions count real tokens only, as they do when
the whole prompt runs at once. Which input rows belong to which image follows
the catalogue's grid rule (`pixel_rows`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sinklens.errors import ImageSpanError
from sinklens.models.spans import ImageSpans

# inputs laid out [batch, pos]; padding gets 0 in each
PER_POSITION = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
# inputs with one row per image (in processor order)
PER_IMAGE = ("image_sizes", "image_grid_thw")
# inputs with one entry per prompt (LLaVA-OneVision: how many images each prompt shows)
PER_PROMPT = ("batch_num_images",)


def pixel_rows(rule: str, inputs: Mapping[str, Tensor], spans: ImageSpans) -> list[int]:
    """How many leading rows of `pixel_values` each image of a batch holds, in processor order."""
    if rule == "merged":  # Qwen2-VL: t * h * w patches per image
        return [int(n) for n in inputs["image_grid_thw"].prod(-1)]
    if rule == "tiles":  # InternVL: one row per tile
        return [len(image.tiles) for image in spans.images]
    return [1] * len(spans.images)  # LLaVA, LLaVA-NeXT: one row (of patches) per image


@dataclass(frozen=True)
class PromptParts:
    """One prompt of a batch: its image prefix (inputs of its own, a key) and its suffix."""

    key: str  # equal for equal prefixes: the same tokens and the same pixels
    prefix: dict[str, Tensor]  # the prefix's model inputs, batch of one, no padding
    suffix: dict[str, Tensor]  # the per-position inputs after the prefix, `[1, suffix]`

    @property
    def prefix_length(self) -> int:
        return int(self.prefix["input_ids"].shape[1])

    @property
    def suffix_length(self) -> int:
        return int(self.suffix["input_ids"].shape[1])


def split_prompts(rule: str, inputs: Mapping[str, Tensor], spans: ImageSpans) -> list[PromptParts]:
    """Each prompt of a left-padded batch as its image prefix and its suffix (`spans`: `check_inputs(inputs)`)."""
    region = spans.mask if spans.region is None else spans.region
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    per_image = _per_image_inputs(rule, inputs, spans)
    parts = []
    for prompt in range(inputs["input_ids"].shape[0]):
        first = int(mask[prompt].nonzero()[0])
        end = int(region[prompt].nonzero().max()) + 1
        images = [index for index, image in enumerate(spans.images) if image.prompt == prompt]
        prefix = {key: inputs[key][prompt : prompt + 1, first:end] for key in PER_POSITION if key in inputs}
        for key in per_image[0] if per_image else ():
            prefix[key] = torch.cat([per_image[index][key] for index in images])
        prefix |= {key: inputs[key][prompt : prompt + 1] for key in PER_PROMPT if key in inputs}
        suffix = {key: inputs[key][prompt : prompt + 1, end:] for key in PER_POSITION if key in inputs}
        parts.append(PromptParts(_key(prefix), prefix, suffix))
    return parts


def _per_image_inputs(rule: str, inputs: Mapping[str, Tensor], spans: ImageSpans) -> list[dict[str, Tensor]]:
    """Per image, in processor order: its rows of `pixel_values` and of every per-image input."""
    pixels = inputs.get("pixel_values")
    if pixels is None:
        raise ImageSpanError("inputs have image tokens but no pixel_values; pass the processor's output unchanged.")
    counts = pixel_rows(rule, inputs, spans)
    if sum(counts) != pixels.shape[0]:
        raise ImageSpanError(
            f"the {len(counts)} images take {sum(counts)} rows of pixel_values, which holds {pixels.shape[0]}; "
            "pass the processor's output unchanged"
        )
    out = [{"pixel_values": chunk} for chunk in pixels.split(counts)]
    for key in PER_IMAGE:
        if key in inputs:
            for index, row in enumerate(inputs[key].split(1)):
                out[index][key] = row
    return out


def _key(prefix: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(prefix):
        value = prefix[key].detach().cpu().contiguous()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
    return digest.hexdigest()


def batch_prefixes(parts: Sequence[PromptParts]) -> dict[str, Tensor]:
    """The model inputs of several prefixes of one length in one batch (no padding enters them)."""
    lengths = {part.prefix_length for part in parts}
    if len(lengths) != 1:
        raise ImageSpanError(f"prefixes of lengths {sorted(lengths)} cannot share a batch without padding")
    return {key: torch.cat([part.prefix[key] for part in parts]) for key in parts[0].prefix}


@dataclass(frozen=True)
class Continuation:
    """A batch laid out to continue from cached prefixes: the full inputs, and where each prompt's parts lie."""

    inputs: dict[str, Tensor]  # per-position inputs `[batch, cached + suffix]`, the padding masked out
    images: dict[str, Tensor]  # every prompt's image inputs in order (for its spans; the model does not see them)
    cached: int  # the positions the cache holds: the longest prefix
    prefix_lengths: tuple[int, ...]


def continuation(parts: Sequence[PromptParts], pad_token_id: int) -> Continuation:
    """[left padding | prefix | padding | suffix] for every prompt: prefixes end at the cache's end, suffixes at the batch's."""
    cached = max(part.prefix_length for part in parts)
    longest = max(part.suffix_length for part in parts)
    inputs: dict[str, Tensor] = {}
    for key in parts[0].suffix:
        rows = []
        for part in parts:
            prefix, suffix = part.prefix[key], part.suffix[key]
            fill = pad_token_id if key == "input_ids" else 0
            rows.append(torch.cat([
                prefix.new_full((1, cached - prefix.shape[1]), fill), prefix,
                suffix.new_full((1, longest - suffix.shape[1]), fill), suffix,
            ], dim=1))  # fmt: skip
        inputs[key] = torch.cat(rows)
    if "attention_mask" not in inputs:
        raise ImageSpanError("a continuation needs the attention mask of its prompts; pass the processor's output")
    image_keys = [key for key in parts[0].prefix if key not in PER_POSITION]
    images = {key: torch.cat([part.prefix[key] for part in parts]) for key in image_keys}
    return Continuation(inputs, images, cached, tuple(part.prefix_length for part in parts))


def continue_positions(model: Any, layout: Continuation) -> dict[str, Tensor]:
    """What makes a continuation's positions the whole prompt's: keyword arguments for `generate`, or model state.

    Plain rotary positions count each prompt's real tokens: the continuation
    passes them explicitly (`position_ids`, from the mask), since a gap of
    padding inside a row would otherwise be counted (nnsight counts a row with
    a gap from its first position). Qwen2-VL keeps `rope_deltas` (multimodal
    rotary positions: the text after an image continues from the image's
    largest position) from its last prefill; here they are computed for this
    batch's full prompts, and generation counts from them.
    """
    inputs = layout.inputs
    inner = getattr(model, "model", None)
    if not (hasattr(inner, "get_rope_index") and hasattr(inner, "rope_deltas")):
        mask = inputs["attention_mask"].long()
        return {"position_ids": (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)}
    extra = {key: inputs[key] for key in ("mm_token_type_ids",) if key in inputs}
    _, deltas = inner.get_rope_index(
        inputs["input_ids"], image_grid_thw=layout.images.get("image_grid_thw"), attention_mask=inputs["attention_mask"],
        **extra,
    )  # fmt: skip
    inner.rope_deltas = deltas
    return {}
