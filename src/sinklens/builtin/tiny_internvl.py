"""tiny-internvl: a real `InternVLForConditionalGeneration` (as transformers ships it) built offline.

InternVL's structure at toy size: an InternViT tower on 112 px tiles of 14 px
patches, pixel shuffle (2 x 2 patches -> one token, so 4 x 4 = 16 tokens a
tile), an MLP projector and a Qwen2 text model with GQA (8 query heads, 2
key/value heads). An image is cut into up to 4 tiles chosen by its aspect ratio
plus a thumbnail of the whole image; its tokens sit between `<img>` and
`</img>`, tile after tile.

Sinks are planted as in tiny-llava: BOS gets a massive value in
`TINY_SINK_DIM`; the patch embedding's channel 0 is the patch brightness, and
the projector's first hidden unit fires, into the sink dimension, only when all
four shuffled patches are white. A white 28 x 28 block aligned on a tile's
token grid is one visual sink.

transformers 5 wants a video processor in the InternVL processor, and its video
processors need torchvision; the tiny processor handles images only
(`sinklens.hf.processors.image_only`).
"""

from __future__ import annotations

from typing import Any

from sinklens.hf.processors import image_only
from sinklens.builtin.tiny_shared import (TINY_SINK_DIM, brightness_channel, chat_template, draw_blocks,
                                           plant_text_sink, plant_white_detector, seeded, tiny_text_config, tiny_tokenizer)

TILE = 112
PATCH = 14
VISION_WIDTH = 32
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
TOKENS_PER_TILE = (TILE // PATCH // 2) ** 2


def tiny_internvl_processor() -> Any:
    from transformers import GotOcr2ImageProcessorPil, InternVLProcessor

    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    return image_only(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(INTERNVL_TOKENS),
        image_seq_length=TOKENS_PER_TILE,
        chat_template=chat_template(INTERNVL_TOKENS["context_image_token"]),
    )


def tiny_internvl_config(tokenizer: Any):
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    text = Qwen2Config(**tiny_text_config(tokenizer, n_kv_heads=2))
    vision = InternVLVisionConfig(
        hidden_size=VISION_WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=[TILE, TILE], patch_size=[PATCH, PATCH],
    )
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_TOKENS["context_image_token"]),
        image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        # untied, as in InternVL2-8B: a tied head would read the planted BOS value back into the logits
        tie_word_embeddings=False,
    )


def plant_internvl_sinks(model: Any, dim: int = TINY_SINK_DIM) -> None:
    """BOS and every all-white 2 x 2 pixel-shuffle window get a massive value in `dim` (see module doc)."""
    plant_text_sink(model.model.language_model.embed_tokens, model.config.text_config.bos_token_id, dim)
    projection = model.model.vision_tower.embeddings.patch_embeddings.projection
    brightness_channel(projection.weight, scale=8.0)
    width = projection.weight.shape[0]
    projector = model.model.multi_modal_projector
    # pixel shuffle puts 4 patches side by side: channel 0 of each sits at k * width
    plant_white_detector(projector.linear_1, projector.linear_2, [k * width for k in range(4)],
                         weight=2.0, bias=-14.0, dim=dim)


def build_tiny_internvl(*, seed: int = 0, plant: bool = True):
    """(model, processor): a tiny InternVL in fp32 with eager attention, on the CPU."""
    from transformers import InternVLForConditionalGeneration

    processor = tiny_internvl_processor()
    config = tiny_internvl_config(processor.tokenizer)
    config._attn_implementation = "eager"
    model = seeded(lambda: InternVLForConditionalGeneration(config), seed)
    if plant:
        plant_internvl_sinks(model)
    return model.eval(), processor


def draw_internvl_scene():
    """A 224 x 112 scene (two tiles and a thumbnail) with white 28 x 28 blocks on the token grid of tile 0 and 1."""
    block = 2 * PATCH
    return draw_blocks(2 * TILE, TILE, [(0, 0, block, block), (TILE + block, 2 * block, TILE + 2 * block, 3 * block)])
