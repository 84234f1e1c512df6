"""tiny-gemma3: a real `Gemma3ForConditionalGeneration` built offline.

Gemma 3's structure at toy size: a SigLIP tower (112 px, 14 px patches: 8 x 8)
whose outputs are average-pooled 2 x 2 into `MM_TOKENS` = 16 image tokens (a
4 x 4 grid), normalised and projected linearly (no hidden layer), and a Gemma 3
text model: embeddings scaled by sqrt(width), GQA, q/k norms, extra norms
around attention and MLP, and sliding-window layers (`WINDOW` = 16 keys, two in
every three layers; the third attends to every key). An image sits between
`<start_of_image>` and `<end_of_image>` (text), and its tokens attend to each
other both ways (the processor's `token_type_ids` mark them; without them the
model silently runs plain causal attention).

Sinks are planted for a linear projector: BOS gets a massive value in
`TINY_SINK_DIM` (the embedding scale multiplies it by sqrt(width), as it does a
real BOS); the patch embedding's channel 0 is the patch brightness, the last
vision layer's MLP writes channel 1 only for a white patch (a threshold in its
first layer), and the projector reads channel 1 into the sink dimension. Every
other path into channel 1 is zeroed, so the tower's final layer norm leaves it
near zero except at white patches. A white 28 x 28 block on the pooling grid is
one visual sink.
"""

from __future__ import annotations

from typing import Any

import torch

from sinklens.builtin.tiny_shared import (
    TINY_SINK_DIM, build_eager, chat_template, draw_blocks, plant_siglip_white_channel, plant_text_sink,
    tiny_text_config, tiny_tokenizer,
)

IMAGE_SIZE = 112
PATCH = 14
MM_TOKENS = 16  # 4 x 4 image tokens: 2 x 2 patches pooled into each
WINDOW = 16
GEMMA_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
WHITE_CHANNEL = 1


def tiny_gemma3_processor() -> Any:
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Gemma3Processor(
        image_processor=image_processor, tokenizer=tiny_tokenizer(GEMMA_TOKENS),
        chat_template=chat_template("<start_of_image>"), image_seq_length=MM_TOKENS,
    )  # fmt: skip


def tiny_gemma3_config(tokenizer: Any) -> Any:
    from transformers import Gemma3Config, SiglipVisionConfig

    base = tiny_text_config(tokenizer, n_kv_heads=2)
    text = {
        **base, "head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
        "rope_parameters": {"full_attention": base["rope_parameters"], "sliding_attention": base["rope_parameters"]},
        # untied, as a head tied to the planted BOS row would read the sink back into the logits
        "tie_word_embeddings": False,
    }  # fmt: skip
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
        patch_size=PATCH, vision_use_head=False,
    )  # fmt: skip
    return Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=MM_TOKENS, tie_word_embeddings=False,
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
    )  # fmt: skip


@torch.no_grad()
def plant_gemma3_sinks(model: Any, dim: int = TINY_SINK_DIM) -> None:
    """BOS and every white 2 x 2 pooling window get a massive value in `dim` (see module doc)."""
    plant_text_sink(model.model.language_model.embed_tokens, model.config.text_config.bos_token_id, dim)
    plant_siglip_white_channel(model.model.vision_tower, WHITE_CHANNEL)
    projection = model.model.multi_modal_projector.mm_input_projection_weight  # [vision width, text width]
    projection.normal_(std=0.2, generator=torch.Generator().manual_seed(0))  # transformers starts it at zero
    projection[WHITE_CHANNEL] = 0.0
    projection[WHITE_CHANNEL, dim] = 80.0


def build_tiny_gemma3(*, seed: int = 0, plant: bool = True) -> tuple[Any, Any]:
    """(model, processor): a tiny Gemma 3 in fp32 with eager attention, on the CPU."""
    from transformers import Gemma3ForConditionalGeneration

    plant_sinks = plant_gemma3_sinks if plant else None
    return build_eager(Gemma3ForConditionalGeneration, tiny_gemma3_config, tiny_gemma3_processor(), plant_sinks, seed)


def draw_gemma3_scene() -> Any:
    """112 x 112 with white 28 x 28 blocks on the pooling grid: image tokens (0, 0) and (2, 1) are visual sinks."""
    block = 2 * PATCH
    return draw_blocks(IMAGE_SIZE, IMAGE_SIZE, [(0, 0, block, block), (block, 2 * block, 2 * block, 3 * block)])
