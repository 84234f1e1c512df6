"""What the tiny built-ins share: chat templates, seeded construction, planted text sinks, scenes.

Every tiny built-in is a real transformers class at toy size with random
weights (a fixed seed), a word-level tokenizer (`tiny.tiny_tokenizer`) and a
processor built from a config: nothing is downloaded. BOS and near-white image
patches carry a planted massive value in `TINY_SINK_DIM`, so the visual
attention sink exists by construction and VAR can be tested against an oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw

from sinklens.models.tiny import CHAT_TEMPLATE, SINK_VALUE, TINY_SINK_DIM

# a dark background and two coloured shapes, as in tiny.draw_scene
BACKGROUND = (40, 40, 60)
WHITE = (250, 250, 250)


def chat_template(image_markup: str) -> str:
    """tiny-llava's chat template with `image_markup` in place of each `<image>`."""
    return CHAT_TEMPLATE.replace("<image> ", image_markup + " ")


def vocab_size(tokenizer: Any) -> int:
    """Embedding rows the tokenizer needs (its vocabulary may skip ids)."""
    return max(tokenizer.get_vocab().values()) + 1


def seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """Run `build` under `torch.manual_seed(seed)`, leaving the global generator as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


@torch.no_grad()
def plant_text_sink(embed_tokens: torch.nn.Embedding, token_id: int, dim: int = TINY_SINK_DIM) -> None:
    """The BOS embedding gets `SINK_VALUE` in the sink dimension."""
    embed_tokens.weight[token_id, dim] = SINK_VALUE


@torch.no_grad()
def brightness_channel(weight: torch.Tensor, scale: float = 4.0) -> None:
    """Make output channel 0 of a patch embedding the (scaled) mean normalised brightness of the patch."""
    weight[0] = scale / weight[0].numel()


@torch.no_grad()
def plant_white_detector(
    first: torch.nn.Linear, second: torch.nn.Linear, inputs: Sequence[int], *, weight: float, bias: float,
    dim: int = TINY_SINK_DIM, out: float = 6.0,
) -> None:
    """Hidden unit 0 of a two-layer projector fires when the summed `inputs` are high (white patches).

    Unit 0 reads only the given input channels (channel 0 of each merged
    sub-patch); the bias keeps anything darker than white below zero, and the
    second layer writes the unit into the sink dimension alone.
    """
    first.weight[0] = 0.0
    first.weight[0, list(inputs)] = weight
    first.bias[0] = bias
    second.weight[:, 0] = 0.0
    second.weight[dim, 0] = out


def draw_blocks(width: int, height: int, white: Sequence[tuple[int, int, int, int]]) -> Image.Image:
    """A dark scene with a red disk and a green box, and white boxes `(left, top, right, bottom)` (exclusive)."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.15, height * 0.35, width * 0.45, height * 0.65), fill=(200, 30, 30))
    draw.rectangle((width * 0.6, height * 0.6, width * 0.88, height * 0.88), fill=(30, 160, 60))
    for left, top, right, bottom in white:
        draw.rectangle((left, top, right - 1, bottom - 1), fill=WHITE)
    return image
