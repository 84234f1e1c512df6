"""tiny-llava-next: a real `LlavaNextForConditionalGeneration` built offline.

tiny-llava's CLIP tower, projector and LLaMA text model (with GQA: 8 query
heads share 4 key/value heads), plus LLaVA-NeXT's any-resolution tiling: an
image is resized to the best of `PINPOINTS`, cut into 84 px tiles, and each
tile is a 6 x 6 patch grid; a base tile of the whole image comes first, then
the tiles' patches as one unpadded grid with an image-newline token after each
row. Sinks are planted as in tiny-llava (`tiny.plant_sinks`).
"""

from __future__ import annotations

from sinklens.builtin.tiny_llava import IMAGE_SIZE, PATCH_SIZE, clip_processor, plant_sinks, tiny_llava_config
from sinklens.builtin.tiny_shared import draw_blocks, seeded

# (height, width) resolutions an image may be tiled at: 1 x 2, 2 x 1 or 2 x 2 tiles of 84 px
PINPOINTS = [[IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE], [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]


def tiny_next_processor():
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS,
    )
    return clip_processor(LlavaNextProcessor, image_processor)


def tiny_next_config():
    from transformers import LlavaNextConfig

    llava = tiny_llava_config(n_kv_heads=4)
    return LlavaNextConfig(
        vision_config=llava.vision_config,
        text_config=llava.text_config,
        image_token_id=llava.image_token_id,
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )


def build_tiny_llava_next(*, seed: int = 0, plant: bool = True):
    """(model, processor): a tiny LLaVA-NeXT in fp32 with eager attention, on the CPU."""
    from transformers import LlavaNextForConditionalGeneration

    config = tiny_next_config()
    config._attn_implementation = "eager"
    model = seeded(lambda: LlavaNextForConditionalGeneration(config), seed)
    if plant:
        plant_sinks(model)
    return model.eval(), tiny_next_processor()


def draw_wide_scene():
    """A 168 x 84 scene (two tiles side by side) with white 28 x 14 blocks.

    Each block is two white patches of a tile and one white patch of the base
    tile (the whole image squeezed to 84 x 84), so every grid has visual sinks:
    tile rows 0 and 3 at tile columns 2-3 and 8-9, base patches (0, 1) and (3, 4).
    """
    p = PATCH_SIZE
    return draw_blocks(2 * IMAGE_SIZE, IMAGE_SIZE, [(2 * p, 0, 4 * p, p), (8 * p, 3 * p, 10 * p, 4 * p)])
