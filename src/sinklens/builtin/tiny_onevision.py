"""tiny-llava-onevision: a real `LlavaOnevisionForConditionalGeneration` built offline.

LLaVA-OneVision's structure at toy size: a SigLIP tower (84 px, 14 px patches:
a 6 x 6 grid, no class token, every patch kept), a 2-layer projector and a
Qwen2 text model with GQA (8 query heads, 2 key/value heads). An image alone in
its prompt is tiled as in LLaVA-NeXT (`PINPOINTS`: up to 2 x 2 tiles of 84 px):
a 6 x 6 base grid of the whole image, then the tiles' patches as one unpadded
grid with an image-newline token after each row, bilinearly downsampled when
it holds more than `MAX_TILES` tiles' worth of patches (`anyres_max_2` here;
`anyres_max_9` in the released checkpoints). An image among several in one
prompt is its base grid and one newline, untiled.

Sinks are planted as in tiny-llava: BOS gets a massive value in
`TINY_SINK_DIM`; the patch embedding's channel 0 is the patch brightness and the
projector's first hidden unit fires, into the sink dimension, only for a white
patch. The demo scene (168 x 84: 1 x 2 tiles, no downsampling) has white
patches on the base grid and on the tiles.

transformers 5 wants a video processor in the OneVision processor, and its video
processors need torchvision; the tiny processor handles images only
(`sinklens.hf.processors.image_only`).
"""

from __future__ import annotations

from typing import Any

from sinklens.builtin.tiny_shared import (TINY_SINK_DIM, build_eager, brightness_channel, chat_template, draw_blocks,
                                           plant_text_sink, plant_white_detector, tiny_text_config, tiny_tokenizer)
from sinklens.hf.processors import image_only

TILE = 84
PATCH = 14
SIDE = TILE // PATCH  # 6 x 6 patches per tile
MAX_TILES = 2
PINPOINTS = [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]
ONEVISION_TOKENS = {"image_token": "<image>", "video_token": "<video>"}


def tiny_onevision_processor() -> Any:
    from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor

    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS, do_pad=True,
    )  # fmt: skip
    return image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(ONEVISION_TOKENS),
        num_image_tokens=SIDE * SIDE,
        vision_feature_select_strategy="full",
        chat_template=chat_template("<image>"),
        vision_aspect_ratio=f"anyres_max_{MAX_TILES}",
    )


def tiny_onevision_config(tokenizer: Any) -> Any:
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
        patch_size=PATCH, vision_use_head=False,
    )  # fmt: skip
    return LlavaOnevisionConfig(
        vision_config=vision,
        text_config=Qwen2Config(**tiny_text_config(tokenizer, n_kv_heads=2)),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio=f"anyres_max_{MAX_TILES}",
    )


def plant_onevision_sinks(model: Any, dim: int = TINY_SINK_DIM) -> None:
    """BOS and every white patch get a massive value in `dim` (see module doc)."""
    plant_text_sink(model.model.language_model.embed_tokens, model.config.text_config.bos_token_id, dim)
    brightness_channel(model.model.vision_tower.embeddings.patch_embedding.weight, scale=4.0)
    projector = model.model.multi_modal_projector
    plant_white_detector(projector.linear_1, projector.linear_2, [0], weight=8.0, bias=-20.0, dim=dim)


def build_tiny_onevision(*, seed: int = 0, plant: bool = True) -> tuple[Any, Any]:
    """(model, processor): a tiny LLaVA-OneVision in fp32 with eager attention, on the CPU."""
    from transformers import LlavaOnevisionForConditionalGeneration

    plant_sinks = plant_onevision_sinks if plant else None
    return build_eager(
        LlavaOnevisionForConditionalGeneration, tiny_onevision_config, tiny_onevision_processor(), plant_sinks, seed
    )


def draw_onevision_scene() -> Any:
    """168 x 84 (1 x 2 tiles): two white 28 x 14 blocks, each one cell of the base grid (the whole image at half
    the width) and two cells of the tiles' grid: base (0, 0) and (3, 3), tiles (0, 0-1) and (3, 6-7)."""
    block = (2 * PATCH, PATCH)
    return draw_blocks(2 * TILE, TILE, [(0, 0, *block), (6 * PATCH, 3 * PATCH, 8 * PATCH, 4 * PATCH)])
