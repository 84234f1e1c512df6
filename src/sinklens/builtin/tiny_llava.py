"""tiny-llava: a real `LlavaForConditionalGeneration` built offline, for tests and quick runs.

Random weights from a small config (fixed seed), a word-level tokenizer
(`tiny_shared.tiny_tokenizer`) and a CLIP image processor from a config: nothing
is downloaded. With `plant=True` (the default of the built-in) the weights
are edited so that BOS and every near-white image patch carry a massive value
in `TINY_SINK_DIM`, as trained LLaMA-family models do in their sink dimensions:

- the BOS embedding gets `SINK_VALUE` in the sink dimension;
- CLIP's patch embedding gives vision channel 0 the mean brightness of a patch,
  and the projector maps a high channel-0 value (a white patch) to a massive
  value in the sink dimension and anything darker to nothing.

Random weights cannot show the visual attention sink; planting it makes the
mechanics (detection, selection, redistribution) testable against an oracle.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image, ImageDraw

from sinklens.builtin.tiny_shared import (
    CHAT_TEMPLATE,
    TINY_SINK_DIM,
    brightness_channel,
    plant_text_sink,
    plant_white_detector,
    seeded,
    tiny_text_config,
    tiny_tokenizer,
)

IMAGE_SIZE = 84
PATCH_SIZE = 14


def tiny_processor():
    """A `LlavaProcessor` with a CLIP image processor at 84 px: a 6 x 6 patch grid."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return clip_processor(LlavaProcessor, image_processor)


def clip_processor(processor_class: type, image_processor: Any) -> Any:
    """A LLaVA-family processor around `image_processor`, with tiny-llava's tokenizer and its CLIP patch layout."""
    return processor_class(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llava_config(*, n_kv_heads: int = 8):
    """LLaVA-1.5's structure at toy size: CLIP tower, 2-layer MLP projector, LLaMA text model."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    tokenizer = tiny_tokenizer()
    text = LlamaConfig(**tiny_text_config(tokenizer, n_kv_heads=n_kv_heads))
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )


def plant_sinks(model, dim: int = TINY_SINK_DIM) -> None:
    """Give BOS and near-white image patches a massive activation in `dim` (see module doc)."""
    plant_text_sink(model.model.language_model.embed_tokens, model.config.text_config.bos_token_id, dim)
    # vision channel 0 = mean normalised brightness of the patch, scaled to dominate the others
    brightness_channel(model.model.vision_tower.embeddings.patch_embedding.weight, scale=4.0)
    projector = model.model.multi_modal_projector
    # only a patch with channel 0 near its maximum gets through
    plant_white_detector(projector.linear_1, projector.linear_2, [0], weight=8.0, bias=-20.0, dim=dim)


def plant_vision_sinks(model, *, channel: int = 1, scale: float = 20.0) -> None:
    """Give near-white patches a high norm in the vision tower, as trained ViTs give their register-like tokens.

    For `studies/vision_to_language_sinks.py`: tiny-llava's tower has no high-norm
    token of its own (nor has toy-llava's DINOv2-S). In the layer LLaVA reads
    its features from (`vision_feature_layer` -2: layer 0 of 2), MLP neuron 0
    fires on a bright patch (its normalised brightness channel 0, about 3.7 on
    white and below 0 elsewhere) and writes `scale` x its activation into
    `channel`, about 20x the median token norm. The projector ignores `channel`,
    so the language model's visual sinks (the white patches) stay where they were.
    """
    import torch

    layer = model.model.vision_tower.encoder.layers[model.config.vision_feature_layer]
    with torch.no_grad():
        layer.mlp.fc1.weight[0].zero_()
        layer.mlp.fc1.weight[0, 0], layer.mlp.fc1.bias[0] = 4.0, -8.0
        layer.mlp.fc2.weight[:, 0].zero_()
        layer.mlp.fc2.weight[channel, 0] = scale
        model.model.multi_modal_projector.linear_1.weight[:, channel].zero_()


def build_tiny_llava(*, seed: int = 0, plant: bool = True, n_kv_heads: int = 8):
    """(model, processor): a tiny LLaVA in fp32 with eager attention, on the CPU."""
    from transformers import LlavaForConditionalGeneration

    config = tiny_llava_config(n_kv_heads=n_kv_heads)
    config._attn_implementation = "eager"
    model = seeded(lambda: LlavaForConditionalGeneration(config), seed)
    if plant:
        plant_sinks(model)
    return model.eval(), tiny_processor()


def draw_scene(size: int = IMAGE_SIZE, *, white_patches: tuple[int, ...] = (0, 14)) -> Image.Image:
    """A dark scene with a red disk and a green box, and near-white patches at the given indices.

    Patch indices count row by row on the 6 x 6 grid of tiny-llava; each white
    patch is where the planted model puts a visual sink.
    """
    image = Image.new("RGB", (size, size), (40, 40, 60))
    draw = ImageDraw.Draw(image)
    draw.ellipse((14, 30, 40, 56), fill=(200, 30, 30))
    draw.rectangle((50, 50, 74, 74), fill=(30, 160, 60))
    per_row = size // PATCH_SIZE
    for index in white_patches:
        row, col = divmod(index, per_row)
        box = (col * PATCH_SIZE, row * PATCH_SIZE, (col + 1) * PATCH_SIZE - 1, (row + 1) * PATCH_SIZE - 1)
        draw.rectangle(box, fill=(250, 250, 250))
    return image
