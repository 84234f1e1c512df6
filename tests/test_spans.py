"""Grid rules: where each image's tokens sit, checked against the processors and the models themselves."""

from __future__ import annotations

import pytest
import torch

from sinklens import FindSinks
from sinklens.errors import ImageSpanError, ParameterError
from sinklens.models.spans import ImageSpans
from sinklens.builtin.tiny_shared import draw_blocks

from conftest import demo_inputs, loaded, runner_for
from oracle_var import language_model


def newline_positions(lm, inputs) -> list[list[int]]:
    """Where the language model receives LLaVA-NeXT's image-newline vector, per prompt (read off the model)."""
    seen = {}

    def keep(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = language_model(lm.model).register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        hook.remove()
    equal = (seen["embeds"] == lm.model.model.image_newline).all(-1)
    return [row.nonzero().flatten().tolist() for row in equal]


@pytest.mark.parametrize("size", [(168, 84), (84, 84), (168, 56), (70, 168), (200, 90), (30, 200)])
def test_llava_next_grids_match_the_processor_and_the_model(size):
    """Unpadded grid sizes and image-newline positions, for wide, square, padded and tall images."""
    lm = loaded("tiny-llava-next")
    inputs = lm.prepare(draw_blocks(*size, []), "what ?")
    spans = lm.check_inputs(inputs)  # the processor's token count agrees with the grids, or this raises
    (image,) = spans.images
    base, tiles = image.tiles
    assert base.name == "base" and tuple(base.positions.shape) == (6, 6)
    assert list(image.newlines) == newline_positions(lm, inputs)[0]
    assert len(image.newlines) == tiles.positions.shape[0]
    assert not spans.mask[0, list(image.newlines)].any() and spans.region[0, list(image.newlines)].all()
    assert int(spans.mask.sum()) == 36 + tiles.positions.numel()
    assert int(spans.text_start[0]) == image.stop  # the last newline still belongs to the image


def test_llava_next_unpadding_cuts_the_padded_rows():
    lm = loaded("tiny-llava-next")
    (image,) = lm.check_inputs(lm.prepare(draw_blocks(168, 56, []), "what ?")).images
    # 168 x 56 is tiled at 84 x 168 (6 x 12 patches) with 14 px of padding above and below: 4 rows remain
    assert tuple(image.tiles[1].positions.shape) == (4, 12)


@pytest.mark.parametrize(
    ("name", "size", "block", "tile", "row", "col"),
    [
        # a 56 x 112 (h x w) Qwen image: 2 x 4 merged tokens; the white block is merged token (1, 3)
        ("tiny-qwen2-vl", (112, 56), (84, 28, 112, 56), "image", 1, 3),
        ("tiny-qwen2.5-vl", (112, 56), (84, 28, 112, 56), "image", 1, 3),
        # a tall 112 x 224 InternVL image: two tiles one above the other; the block is in the lower one
        ("tiny-internvl", (112, 224), (84, 112 + 56, 112, 112 + 84), "tile 1", 2, 3),
    ],
)
def test_rows_and_columns_are_not_swapped(name, size, block, tile, row, col):
    """A white block on a non-square image becomes a sink exactly where the grid puts it."""
    lm = loaded(name)
    inputs = lm.prepare(draw_blocks(*size, [block]), "what ?")
    ctx = runner_for(name).forward(inputs, [FindSinks()]).ctx
    (image,) = ctx.image.images
    tiles = {t.name: t for t in image.tiles}
    assert ctx.sinks[2][0].nonzero().flatten().tolist() == [0, int(tiles[tile].positions[row, col])]


def test_qwen_grid_follows_image_grid_thw():
    lm = loaded("tiny-qwen2-vl")
    inputs = lm.prepare([draw_blocks(112, 56, []), draw_blocks(84, 168, [])], "what ?")
    shapes = [tuple(image.tiles[0].positions.shape) for image in lm.check_inputs(inputs).images]
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 8], [1, 12, 6]]
    assert shapes == [(2, 4), (6, 3)]


def test_internvl_tiles_and_thumbnail():
    lm = loaded("tiny-internvl")
    (image,) = lm.check_inputs(demo_inputs("tiny-internvl")).images
    assert [tile.name for tile in image.tiles] == ["tile 0", "tile 1", "thumbnail"]
    assert lm.grid == (4, 4) and all(tuple(tile.positions.shape) == (4, 4) for tile in image.tiles)


def test_tile_gather_arranges_values_on_the_grid():
    lm = loaded("tiny-qwen2-vl")
    spans = lm.check_inputs(demo_inputs("tiny-qwen2-vl"))
    positions = torch.arange(spans.mask.shape[-1])
    grid = spans.images[0].tiles[0].gather(positions)
    assert grid[0, 0] == spans.images[0].start and grid[1, 0] == spans.images[0].start + 4


def test_a_qwen_image_has_no_fixed_grid():
    with pytest.raises(ValueError, match="check_inputs"):
        _ = loaded("tiny-qwen2-vl").grid


# --- bad inputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "key"), [("tiny-llava-next", "image_sizes"), ("tiny-qwen2-vl", "image_grid_thw")])
def test_inputs_without_the_image_layout_say_which_key_is_missing(name, key):
    inputs = {k: v for k, v in demo_inputs(name).items() if k != key}
    with pytest.raises(ImageSpanError, match=f"need '{key}'"):
        loaded(name).check_inputs(inputs)


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-qwen2-vl", "tiny-internvl"])
def test_a_missing_image_token_is_found(name):
    lm = loaded(name)
    ids = demo_inputs(name)["input_ids"]
    first = int((ids[0] == lm.image_token_id).nonzero()[0])
    short = {**demo_inputs(name), "input_ids": torch.cat([ids[:, :first], ids[:, first + 1 :]], dim=1)}
    with pytest.raises(ImageSpanError, match="image tokens"):
        lm.check_inputs(short)


def test_an_image_split_by_text_is_refused():
    lm = loaded("tiny-llava")
    ids = demo_inputs("tiny-llava")["input_ids"].clone()
    image = (ids[0] == lm.image_token_id).nonzero().flatten()
    # move one image token from the middle of the image to just after it: same count, broken run
    ids[0, int(image[10])] = int(ids[0, int(image[-1]) + 1])
    ids[0, int(image[-1]) + 1] = lm.image_token_id
    with pytest.raises(ImageSpanError, match="run of image tokens there is 9..19"):
        lm.check_inputs({**demo_inputs("tiny-llava"), "input_ids": ids})


def test_internvl_tile_count_must_match_the_pixels():
    inputs = demo_inputs("tiny-internvl")
    with pytest.raises(ImageSpanError, match="3 tiles .* pixel_values holds 2"):
        loaded("tiny-internvl").check_inputs({**inputs, "pixel_values": inputs["pixel_values"][:2]})


def test_prepare_batch_needs_examples_with_images():
    lm = loaded("tiny-llava")
    with pytest.raises(ParameterError, match="at least one"):
        lm.prepare_batch([])
    with pytest.raises(ParameterError, match="example 0 has no image"):
        lm.prepare_batch([([], "what ?")])
