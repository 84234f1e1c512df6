"""tiny-qwen3-vl: a real `Qwen3VLForConditionalGeneration` built offline.

Qwen3-VL's structure at toy size: a native-resolution ViT on 16 px patches whose
2 x 2 neighbours are merged into one language-model token (the 160 x 128 demo
scene gives `image_grid_thw = (1, 8, 10)` and 4 x 5 = 20 image tokens), a Qwen3 text model
with GQA, per-head q/k norms and interleaved multimodal rotary positions, and
DeepStack: the outputs of vision blocks `deepstack_visual_indexes` are merged
like the last one and added to the hidden states at the image positions after
the first text layers (one per index). The processor returns
`mm_token_type_ids`, which the model requires.

Sinks are planted as in tiny-qwen2-vl: BOS gets a massive value in
`TINY_SINK_DIM`; the patch embedding's channel 0 is the patch brightness, and
the merger's first hidden unit fires, into the sink dimension, only when all
four merged patches are white. A white 32 x 32 block aligned on the merge grid
is one visual sink. The DeepStack mergers keep their random weights: what they
add is small beside the planted value.

transformers 5 wants a video processor in the Qwen3-VL processor, and its video
processors need torchvision; the tiny processor handles images only
(`sinklens.hf.processors.image_only`).
"""

from __future__ import annotations

from typing import Any

from sinklens.builtin.tiny_qwen import IMAGE_MARKUP, QWEN_TOKENS, _token_ids
from sinklens.builtin.tiny_shared import (TINY_SINK_DIM, build_eager, brightness_channel, chat_template, draw_blocks,
                                           plant_text_sink, plant_white_detector, tiny_text_config, tiny_tokenizer)
from sinklens.hf.processors import image_only

PATCH = 16
MERGE = 2
SCENE_SIZE = (160, 128)  # width, height: 10 x 8 patches, 4 rows x 5 columns of merged tokens
VISION_WIDTH = 32
DEEPSTACK = (0,)  # vision block 0's output joins the text model after its first layer


def tiny_qwen3_processor() -> Any:
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLProcessor

    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 4 * (PATCH * MERGE) ** 2, "longest_edge": 64 * (PATCH * MERGE) ** 2},
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
    )  # fmt: skip
    return image_only(Qwen3VLProcessor)(
        image_processor=image_processor, tokenizer=tiny_tokenizer(QWEN_TOKENS),
        chat_template=chat_template(IMAGE_MARKUP),
    )


def tiny_qwen3_config(tokenizer: Any) -> Any:
    from transformers import Qwen3VLConfig

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12], "mrope_interleaved": True}
    text = {**tiny_text_config(tokenizer, n_kv_heads=2, rope=rope), "head_dim": 64}
    vision = {
        "depth": 2, "hidden_size": VISION_WIDTH, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 512,
        "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2, "num_position_embeddings": 64,
        "deepstack_visual_indexes": list(DEEPSTACK),
    }
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_token_ids(tokenizer))


def plant_qwen3_sinks(model: Any, dim: int = TINY_SINK_DIM) -> None:
    """BOS and every all-white 2 x 2 merge window get a massive value in `dim` (see module doc)."""
    plant_text_sink(model.model.language_model.embed_tokens, model.config.text_config.bos_token_id, dim)
    visual = model.model.visual
    brightness_channel(visual.patch_embed.proj.weight, scale=8.0)
    width = visual.patch_embed.proj.weight.shape[0]
    merger = visual.merger  # its layer norm runs on each patch first: a bright channel 0 stays near +sqrt(width)
    plant_white_detector(merger.linear_fc1, merger.linear_fc2, [k * width for k in range(MERGE**2)], weight=1.0,
                         bias=-18.0, dim=dim, out=16.0)  # fmt: skip


def build_tiny_qwen3_vl(*, seed: int = 0, plant: bool = True) -> tuple[Any, Any]:
    """(model, processor): a tiny Qwen3-VL in fp32 with eager attention, on the CPU."""
    from transformers import Qwen3VLForConditionalGeneration

    plant_sinks = plant_qwen3_sinks if plant else None
    return build_eager(Qwen3VLForConditionalGeneration, tiny_qwen3_config, tiny_qwen3_processor(), plant_sinks, seed)


def draw_qwen3_scene() -> Any:
    """A scene with white 32 x 32 blocks on the merge grid: merged tokens (0, 0) and (2, 1) are visual sinks."""
    block = PATCH * MERGE
    return draw_blocks(*SCENE_SIZE, [(0, 0, block, block), (block, 2 * block, 2 * block, 3 * block)])
