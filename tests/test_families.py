"""The 2026 families' layouts and semantics (docs/architecture.md, "Families"): what is an image token,
what is markup, where the text queries start, and the choices the paper does not make for them."""

from __future__ import annotations

import pytest
import torch

from sinklens import VAR, FindSinks, Hook
from sinklens.builtin.tiny_shared import draw_blocks
from sinklens.errors import ImageSpanError

from conftest import QUESTION, demo_inputs, loaded, max_diff, runner_for
from oracle_var import language_model

# the token the processor puts right after each family's last image token: a text token, so the first text query
CLOSING = {
    "tiny-llava-onevision": None,  # the last image-newline token is the image's last token; the text follows
    "tiny-qwen3-vl": "<|vision_end|>",
    "tiny-gemma3": "<end_of_image>",
    "tiny-smolvlm": "<fake_token_around_image>",
    "tiny-mistral3": "[IMG_END]",
}
FAMILIES = list(CLOSING)


def token_texts(lm, ids: torch.Tensor) -> list[str]:
    return lm.processor.tokenizer.convert_ids_to_tokens(ids.tolist())


@pytest.mark.parametrize("name", FAMILIES)
def test_image_tokens_markup_and_the_first_text_query(name):
    """Visual tokens are exactly the image placeholders; markup inside an image is neither image nor query."""
    lm = loaded(name)
    inputs = demo_inputs(name)
    ids = inputs["input_ids"][0]
    spans = lm.check_inputs(inputs)
    (image,) = spans.images_of(0)
    texts = token_texts(lm, ids)
    placeholder = ids == lm.image_token_id
    newlines = torch.zeros_like(placeholder)
    newlines[list(image.newlines)] = True  # OneVision's image-newline tokens: placeholders holding one learned vector
    assert torch.equal(spans.mask[0], placeholder & ~newlines)  # I_vis: every placeholder that carries the image
    inside = torch.zeros_like(placeholder)
    inside[image.start : image.stop] = True
    assert torch.equal(spans.region[0], inside)  # the image's extent
    assert set(image.markup) == set((inside & ~placeholder).nonzero().flatten().tolist())
    tile_positions = torch.cat([tile.positions.flatten() for tile in image.tiles]).tolist()
    assert sorted(tile_positions + list(image.newlines)) == placeholder.nonzero().flatten().tolist()
    assert int(spans.text_start[0]) == image.stop  # queries start right after the image's last token
    if CLOSING[name] is not None:
        assert texts[image.stop] == CLOSING[name]


def test_smolvlm_markup_is_the_tile_markers():
    lm = loaded("tiny-smolvlm")
    inputs = demo_inputs("tiny-smolvlm")
    (image,) = lm.check_inputs(inputs).images_of(0)
    texts = token_texts(lm, inputs["input_ids"][0])
    assert [tile.name for tile in image.tiles] == ["row 1 col 1", "row 1 col 2", "row 2 col 1", "row 2 col 2", "global"]
    assert all(tuple(tile.positions.shape) == (4, 4) for tile in image.tiles)
    markers = [texts[p] for p in image.markup]
    assert {"<row_1_col_2>", "<row_2_col_1>", "<row_2_col_2>", "<global-img>"} <= set(markers)
    # each tile's first token follows its marker
    for tile in image.tiles[1:]:
        opener = "<global-img>" if tile.name == "global" else "<{}>".format(tile.name.replace(" ", "_"))
        assert texts[int(tile.positions[0, 0]) - 1] == opener


def test_mistral3_breaks_end_each_row_and_the_image_is_one_entry():
    lm = loaded("tiny-mistral3")
    inputs = demo_inputs("tiny-mistral3")
    (image,) = lm.check_inputs(inputs).images_of(0)
    texts = token_texts(lm, inputs["input_ids"][0])
    (tile,) = image.tiles
    rows, cols = tile.positions.shape
    assert [texts[p] for p in image.markup] == ["[IMG_BREAK]"] * (rows - 1)
    assert [texts[int(tile.positions[r, -1]) + 1] for r in range(rows - 1)] == ["[IMG_BREAK]"] * (rows - 1)
    assert (tile.positions[:, 1:] - tile.positions[:, :-1] == 1).all()  # each row is one run


@pytest.mark.parametrize("name", FAMILIES)
def test_two_images_in_one_prompt_are_two_entries(name):
    """`images_of(i)` gives one entry per image, whatever its runs, tiles or markup."""
    lm = loaded(name)
    size = (128, 96) if name == "tiny-mistral3" else (256, 256) if name == "tiny-smolvlm" else (112, 112)
    images = [draw_blocks(*size, []), draw_blocks(*size, [(0, 0, 28, 28)])]
    inputs = lm.prepare(images, QUESTION)
    spans = lm.check_inputs(inputs)
    first, second = spans.images_of(0)
    assert first.stop <= second.start and (first.index, second.index) == (0, 1)
    assert int(spans.text_start[0]) == second.stop
    result = runner_for(name).forward(inputs, [FindSinks()])
    assert result.logits.isfinite().all()


def test_qwen3_vl_find_sinks_reads_phi_after_deepstack():
    """phi at layer l is the stream layer l reads: with DeepStack's features in it (layer 0's output lacks them)."""
    name = "tiny-qwen3-vl"
    lm, inputs = loaded(name), demo_inputs(name)
    seen: dict[str, torch.Tensor] = {}
    layers = language_model(lm.model).layers

    def output(module, args, out):
        seen["out0"] = out[0] if isinstance(out, tuple) else out

    def input(module, args, kwargs):
        seen["in1"] = args[0] if args else kwargs["hidden_states"]

    hooks = [layers[0].register_forward_hook(output), layers[1].register_forward_pre_hook(input, with_kwargs=True)]
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    image = lm.check_inputs(inputs).mask[0]
    assert max_diff(seen["in1"][0, image], seen["out0"][0, image]) > 1e-3  # DeepStack adds at image tokens
    assert max_diff(seen["in1"][0, ~image], seen["out0"][0, ~image]) == 0.0  # and nowhere else
    ctx = runner_for(name).forward(inputs, [FindSinks()]).ctx
    stream = seen["in1"][0].float()  # phi from the formula: max |x_d| / RMS(x) over the sink dimensions
    phi = stream[:, list(lm.sink_dims)].abs().max(-1).values / stream.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(ctx.phi[1][0], phi, rtol=1e-4, atol=1e-4)


def test_gemma3_without_token_type_ids_is_refused():
    """Without token_type_ids Gemma 3 silently runs causal attention over the image: sinklens refuses the inputs."""
    lm = loaded("tiny-gemma3")
    inputs = {k: v for k, v in demo_inputs("tiny-gemma3").items() if k != "token_type_ids"}
    with pytest.raises(ImageSpanError, match="token_type_ids"):
        lm.check_inputs(inputs)


def test_gemma3_image_rows_see_later_image_keys_and_var_leaves_them():
    """The image block is bidirectional; VAR edits only the text-query rows after the image (its image-centric heads
    are chosen from those rows, as in every family), never an image row."""
    name = "tiny-gemma3"
    lm, inputs = loaded(name), demo_inputs(name)
    (image,) = lm.check_inputs(inputs).images_of(0)
    first = image.tiles[0].positions.flatten()
    full = lm.model.config.text_config.layer_types.index("full_attention")
    patterns = {}

    def keep(name):
        def fn(pattern, ctx):
            patterns[name] = pattern.detach().clone()
        return fn

    point = f"blocks.{full}.attn.hook_pattern"
    runner_for(name).forward(inputs, [Hook(point, keep("plain"), writes=False)])
    plain = patterns["plain"][0]  # [head, query, key]
    assert plain[:, int(first[0]), first[1:]].sum(-1).min() > 0.0  # the first image token sees later image tokens
    runner_for(name).forward(inputs, [FindSinks(), VAR(layers=[full], heads="all"), Hook(point, keep("var"), writes=False)])
    edited = patterns["var"][0]
    text = int(lm.check_inputs(inputs).text_start[0])
    assert max_diff(edited[:, :text], plain[:, :text]) == 0.0  # image rows (and everything before the text) untouched
    assert max_diff(edited[:, text:], plain[:, text:]) > 1e-3  # the text-query rows are redistributed
