"""tiny-smolvlm: a real `SmolVLMForConditionalGeneration` built offline.

SmolVLM's structure (the Idefics3 layout) at toy size: an image larger than
`TILE` = 128 px is cut into `TILE`-sized tiles (rows x cols) plus a global view of
the whole image resized to one tile; each tile goes through a SigLIP tower (16 px
patches: 8 x 8), a pixel shuffle folds 2 x 2 neighbours into one token (4 x 4 =
16 tokens per tile) and one linear layer projects them into a Llama text model.
In the prompt, each tile's tokens follow `<fake_token_around_image>` and a
`<row_r_col_c>` marker, and the global view follows `<global-img>`: one image is
many runs of image tokens with text markers between them.

Sinks are planted for a linear projector, as in tiny-gemma3: BOS gets a
massive value in `TINY_SINK_DIM`, the tower's output channel 1 is large at white
patches only, and the projector reads channel 1 of the four shuffled patches
into the sink dimension. A white 64 x 64 block on a 64 px grid of the 256 x 256
scene is 2 x 2 sinks in its tile and one in the global view (where it is 32 px).

transformers' SmolVLM processor wants a video processor (torchvision) and
num2words, for videos only; the tiny processor handles images
(`sinklens.hf.processors.image_only`).
"""

from __future__ import annotations

from typing import Any

import torch

from sinklens.builtin.tiny_shared import (
    TINY_SINK_DIM, build_eager, chat_template, draw_blocks, plant_siglip_white_channel, plant_text_sink,
    tiny_text_config, tiny_tokenizer,
)
from sinklens.hf.processors import image_only

TILE = 128
PATCH = 16
SHUFFLE = 2
TOKENS_PER_TILE = (TILE // PATCH // SHUFFLE) ** 2  # 16
MAX_TILES_PER_SIDE = 4
SCENE_SIZE = 256  # 2 x 2 tiles and the global view: 80 image tokens
SMOLVLM_TOKENS = {
    "image_token": "<image>", "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}  # fmt: skip
ROW_COL_TOKENS = tuple(
    f"<row_{r}_col_{c}>" for r in range(1, MAX_TILES_PER_SIDE + 1) for c in range(1, MAX_TILES_PER_SIDE + 1)
)
WHITE_CHANNEL = 1


def tiny_smolvlm_processor() -> Any:
    from transformers import SmolVLMImageProcessorPil, SmolVLMProcessor

    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": SCENE_SIZE}, max_image_size={"longest_edge": TILE},
    )  # fmt: skip
    tokenizer = tiny_tokenizer(SMOLVLM_TOKENS, added_tokens=ROW_COL_TOKENS)
    return image_only(SmolVLMProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=TOKENS_PER_TILE,
        chat_template=chat_template("<image>"),
    )  # fmt: skip


def tiny_smolvlm_config(tokenizer: Any) -> Any:
    from transformers import SmolVLMConfig

    text = {**tiny_text_config(tokenizer, n_kv_heads=4), "model_type": "llama", "tie_word_embeddings": False}
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": TILE, "patch_size": PATCH,
    }  # fmt: skip
    return SmolVLMConfig(
        text_config=text, vision_config=vision, scale_factor=SHUFFLE, image_token_id=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip


@torch.no_grad()
def plant_smolvlm_sinks(model: Any, dim: int = TINY_SINK_DIM) -> None:
    """BOS and every token whose four shuffled patches are white get a massive value in `dim` (see module doc)."""
    plant_text_sink(model.model.text_model.embed_tokens, model.config.text_config.bos_token_id, dim)
    tower = model.model.vision_model
    plant_siglip_white_channel(tower, WHITE_CHANNEL)
    width = tower.config.hidden_size
    projection = model.model.connector.modality_projection.proj.weight  # [text width, 4 x vision width]
    # wider than transformers' init, so that channel 1's small value off white patches stays far below the sink
    projection.normal_(std=0.2, generator=torch.Generator().manual_seed(0))
    channels = [k * width + WHITE_CHANNEL for k in range(SHUFFLE * SHUFFLE)]
    projection[:, channels] = 0.0
    projection[dim, channels] = 10.0


def build_tiny_smolvlm(*, seed: int = 0, plant: bool = True) -> tuple[Any, Any]:
    """(model, processor): a tiny SmolVLM in fp32 with eager attention, on the CPU."""
    from transformers import SmolVLMForConditionalGeneration

    plant_sinks = plant_smolvlm_sinks if plant else None
    return build_eager(
        SmolVLMForConditionalGeneration, tiny_smolvlm_config, tiny_smolvlm_processor(), plant_sinks, seed
    )


def draw_smolvlm_scene() -> Any:
    """256 x 256 with white 64 x 64 blocks at (0, 0) and (192, 128): 2 x 2 sinks in tiles row 1 col 1 and row 2 col 2,
    one each at (0, 0) and (2, 3) of the global view."""
    block = 64
    return draw_blocks(SCENE_SIZE, SCENE_SIZE, [(0, 0, block, block), (3 * block, 2 * block, 4 * block, 3 * block)])
