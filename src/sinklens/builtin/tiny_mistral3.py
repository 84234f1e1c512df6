"""tiny-mistral3: a real `Mistral3ForConditionalGeneration` built offline.

Mistral 3's structure at toy size: a Pixtral vision tower at native resolution
(8 px patches, 2-D rotary positions, RMS norms), a projector that normalises the
patches, merges each 2 x 2 block into one token (`spatial_merge_size`) and maps
it through a two-layer MLP, and a Mistral text model. In the prompt an image is
one row of `[IMG]` tokens per 16 px of height, each row closed by `[IMG_BREAK]`
and the last by `[IMG_END]` (text tokens): one image is many runs of image
tokens. The 128 x 96 demo scene is 6 rows of 8 tokens; the model needs
`image_sizes`, which the processor returns.

Sinks are planted as in tiny-qwen2-vl: BOS gets a massive value in
`TINY_SINK_DIM`; the patch embedding's channel 0 is the patch brightness (no
vision layer writes it), the merging layer sums the four patches' channel 0, and
the projector's first hidden unit fires, into the sink dimension, only when all
four are white. A white 16 x 16 block aligned on the merge grid is one visual sink.

transformers' `PixtralProcessor` refuses to exist without torchvision; the tiny
processor is sinklens' own Pixtral-layout processor over the PIL image processor
(`sinklens.hf.processors.pixtral_processor_class`).
"""

from __future__ import annotations

from typing import Any

import torch

from sinklens.builtin.tiny_shared import (TINY_SINK_DIM, build_eager, brightness_channel, chat_template, draw_blocks,
                                           plant_text_sink, plant_white_detector, tiny_text_config, tiny_tokenizer)
from sinklens.hf.processors import pixtral_processor_class

PATCH = 8
MERGE = 2
MAX_SIZE = 128
SCENE_SIZE = (128, 96)  # width, height: 8 x 6 merged tokens
VISION_WIDTH = 32
PIXTRAL_TOKENS = {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}


def tiny_mistral3_processor() -> Any:
    from transformers import PixtralImageProcessorPil

    image_processor = PixtralImageProcessorPil(size={"longest_edge": MAX_SIZE}, patch_size=PATCH)
    return pixtral_processor_class()(
        image_processor=image_processor, tokenizer=tiny_tokenizer(PIXTRAL_TOKENS), patch_size=PATCH,
        spatial_merge_size=MERGE, chat_template=chat_template("[IMG]"),
    )  # fmt: skip


def tiny_mistral3_config(tokenizer: Any) -> Any:
    from transformers import Mistral3Config

    text = {**tiny_text_config(tokenizer, n_kv_heads=2), "model_type": "mistral", "sliding_window": None,
            "head_dim": 64, "tie_word_embeddings": False}  # fmt: skip
    vision = {
        "model_type": "pixtral", "hidden_size": VISION_WIDTH, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "head_dim": VISION_WIDTH // 2, "image_size": MAX_SIZE, "patch_size": PATCH,
    }  # fmt: skip
    return Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=tokenizer.image_token_id, spatial_merge_size=MERGE,
        tie_word_embeddings=False, multimodal_projector_bias=True,  # the planted detector's threshold is a bias
    )  # fmt: skip


@torch.no_grad()
def plant_mistral3_sinks(model: Any, dim: int = TINY_SINK_DIM) -> None:
    """BOS and every all-white 2 x 2 merge block get a massive value in `dim` (see module doc)."""
    plant_text_sink(model.model.language_model.embed_tokens, model.config.text_config.bos_token_id, dim)
    tower = model.model.vision_tower
    brightness_channel(tower.patch_conv.weight, scale=8.0)
    for layer in tower.transformer.layers:  # the brightness reaches the projector unchanged
        layer.attention.o_proj.weight[0] = 0.0
        layer.feed_forward.down_proj.weight[0] = 0.0
    projector = model.model.multi_modal_projector
    merge = projector.patch_merger.merging_layer.weight  # [width, width x 4]: channel c of patch k at c * 4 + k
    merge[0] = 0.0
    merge[0, : MERGE**2] = 1.0
    plant_white_detector(projector.linear_1, projector.linear_2, [0], weight=2.0, bias=-14.0, dim=dim)


def build_tiny_mistral3(*, seed: int = 0, plant: bool = True) -> tuple[Any, Any]:
    """(model, processor): a tiny Mistral 3 in fp32 with eager attention, on the CPU."""
    from transformers import Mistral3ForConditionalGeneration

    plant_sinks = plant_mistral3_sinks if plant else None
    return build_eager(
        Mistral3ForConditionalGeneration, tiny_mistral3_config, tiny_mistral3_processor(), plant_sinks, seed
    )


def draw_mistral3_scene() -> Any:
    """128 x 96 with white 16 x 16 blocks on the merge grid: tokens (0, 0) and (2, 5) are visual sinks."""
    block = PATCH * MERGE
    return draw_blocks(*SCENE_SIZE, [(0, 0, block, block), (5 * block, 2 * block, 6 * block, 3 * block)])
