"""tiny-qwen2-vl and tiny-qwen2.5-vl: real `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration`.

Qwen2-VL's structure at toy size: a native-resolution ViT on 14 px patches
whose 2 x 2 neighbours are merged into one language-model token (a 112 px
image gives `image_grid_thw = (1, 8, 8)` and 4 x 4 = 16 image tokens), a Qwen2
text model with GQA (8 query heads, 2 key/value heads) and multimodal rotary
positions (temporal, height, width sections), all built offline.

Sinks are planted as in tiny-llava: BOS gets a massive value in
`TINY_SINK_DIM`; the patch embedding's channel 0 is the patch brightness, and
the merger's first hidden unit fires, into the sink dimension, only when all
four merged patches are white. A white 28 x 28 block aligned on the merge grid
is one visual sink.

transformers 5 wants a video processor in every Qwen2-VL processor, and its
video processors need torchvision; the tiny processors handle images only
(`sinklens.hf.processors.image_only`).
"""

from __future__ import annotations

from typing import Any

from sinklens.hf.processors import image_only
from sinklens.builtin.tiny_shared import (TINY_SINK_DIM, brightness_channel, chat_template, draw_blocks,
                                           plant_text_sink, plant_white_detector, seeded, tiny_text_config, tiny_tokenizer)

PATCH = 14
MERGE = 2
SCENE_SIZE = 112  # 8 x 8 patches, 4 x 4 merged tokens
VISION_WIDTH = 32
QWEN_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
IMAGE_MARKUP = "<|vision_start|><|image_pad|><|vision_end|>"


def tiny_qwen_processor(processor_class: type) -> Any:
    from transformers import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4 * (PATCH * MERGE) ** 2, "longest_edge": 64 * (PATCH * MERGE) ** 2},
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=2,
    )
    return image_only(processor_class)(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(QWEN_TOKENS),
        chat_template=chat_template(IMAGE_MARKUP),
    )


def _text_config(tokenizer: Any) -> dict[str, Any]:
    # head_dim 64: 32 rotary frequencies split over (temporal, height, width)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}
    return tiny_text_config(tokenizer, n_kv_heads=2, rope=rope)


def _token_ids(tokenizer: Any) -> dict[str, int]:
    return {
        "image_token_id": tokenizer.image_token_id,
        "video_token_id": tokenizer.video_token_id,
        "vision_start_token_id": tokenizer.convert_tokens_to_ids(QWEN_TOKENS["vision_start_token"]),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids(QWEN_TOKENS["vision_end_token"]),
    }


def tiny_qwen2_vl_config(tokenizer: Any):
    from transformers import Qwen2VLConfig

    vision = {
        "depth": 2, "embed_dim": VISION_WIDTH, "hidden_size": 512, "num_heads": 2, "mlp_ratio": 2,
        "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(text_config=_text_config(tokenizer), vision_config=vision, **_token_ids(tokenizer))


def tiny_qwen2_5_vl_config(tokenizer: Any):
    from transformers import Qwen2_5_VLConfig

    vision = {
        "depth": 2, "hidden_size": VISION_WIDTH, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 512,
        "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2,
        # block 0 attends within 56 px windows, block 1 globally
        "window_size": 56, "fullatt_block_indexes": [1],
    }
    return Qwen2_5_VLConfig(text_config=_text_config(tokenizer), vision_config=vision, **_token_ids(tokenizer))


def plant_qwen_sinks(model: Any, dim: int = TINY_SINK_DIM) -> None:
    """BOS and every all-white 2 x 2 merge window get a massive value in `dim` (see module doc)."""
    plant_text_sink(model.model.language_model.embed_tokens, model.config.text_config.bos_token_id, dim)
    visual = model.model.visual
    brightness_channel(visual.patch_embed.proj.weight, scale=8.0)
    width = visual.patch_embed.proj.weight.shape[0]
    first, second = visual.merger.mlp[0], visual.merger.mlp[2]
    # the merger reads 4 normalised patches side by side: channel 0 of each sits at k * width
    plant_white_detector(first, second, [k * width for k in range(MERGE**2)], weight=2.0, bias=-14.0, dim=dim)


def _build(model_class_name: str, processor_class_name: str, config_fn: Any, seed: int, plant: bool):
    import transformers

    processor = tiny_qwen_processor(getattr(transformers, processor_class_name))
    config = config_fn(processor.tokenizer)
    config._attn_implementation = "eager"
    model = seeded(lambda: getattr(transformers, model_class_name)(config), seed)
    if plant:
        plant_qwen_sinks(model)
    return model.eval(), processor


def build_tiny_qwen2_vl(*, seed: int = 0, plant: bool = True):
    """(model, processor): a tiny Qwen2-VL in fp32 with eager attention, on the CPU."""
    return _build("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", tiny_qwen2_vl_config, seed, plant)


def build_tiny_qwen2_5_vl(*, seed: int = 0, plant: bool = True):
    """(model, processor): a tiny Qwen2.5-VL in fp32 with eager attention, on the CPU."""
    return _build("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", tiny_qwen2_5_vl_config, seed, plant)


def draw_qwen_scene(size: int = SCENE_SIZE):
    """A scene with white 28 x 28 blocks on the merge grid: merged tokens (0, 0) and (2, 1) are visual sinks."""
    block = PATCH * MERGE
    return draw_blocks(size, size, [(0, 0, block, block), (block, 2 * block, 2 * block, 3 * block)])
