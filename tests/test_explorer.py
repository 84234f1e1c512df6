"""The explorer page's inlined data equals what plain hook runs record (tests/explorer_oracle.py).

Checked on every tiny built-in and on toy-llava: the generated tokens, the
queries, every attention value on the image and text keys (within the stated
quantisation error: scale / 2 = the row's maximum / 510), the layer mean, s, r,
phi, the sink sets, the rows VAR edited, and the tiles' prompt positions.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import sinklens as sl
from conftest import ARCHS, QUESTION, loaded
from explorer_oracle import expected_queries, oracle_run
from sinklens.errors import ParameterError
from sinklens.explorer import read_data
from sinklens.explorer.pack import decode_view
from sinklens.builtin import demo_scene

MODELS = [*ARCHS, "toy-llava"]
STEPS = 3


def _page(name, **kwargs):
    lm = loaded(name)
    return lm, sl.explore(lm, demo_scene(name), QUESTION, max_new_tokens=STEPS, **kwargs)


def _oracle_rows(oracle, queries, n_layers, key_length, *, before=False):
    rows = []
    for q in queries:  # a test oracle: loops are fine here
        per_layer = []
        for layer in range(n_layers):
            row = oracle.row(q, layer, before=before)
            per_layer.append(torch.nn.functional.pad(row, (0, key_length - row.shape[-1])))
        rows.append(torch.stack(per_layer))
    return torch.stack(rows)  # [q, layer, head, key]


def _close_within_quantisation(got, expected):
    expected = np.asarray(expected, dtype=np.float32)
    bound = expected.max(-1, keepdims=True) / 510 * (1 + 1e-5) + 1e-8
    err = np.abs(got - expected)
    assert (err <= bound).all(), f"max error {err.max():.3g} exceeds the stated bound (worst excess {(err - bound).max():.3g})"


def check_view(lm, inputs, data, view, oracle):
    got = decode_view(data, view)
    v = data["views"][view]
    spans = lm.check_inputs(inputs)
    prompt_length = inputs["input_ids"].shape[-1]
    assert v["generated_ids"] == oracle.tokens
    queries = expected_queries(spans, inputs["attention_mask"], prompt_length, len(oracle.tokens), STEPS)
    assert v["queries"] == queries
    visual = spans.mask[0].nonzero().flatten().tolist()
    assert data["visual_keys"] == visual
    text = (~spans.mask[0]).nonzero().flatten().tolist() + [prompt_length + k for k in range(len(oracle.tokens))]
    assert v["text_keys"] == text
    rows = _oracle_rows(oracle, queries, lm.n_layers, prompt_length + len(oracle.tokens))
    slots = torch.cat([rows, rows.mean(2, keepdim=True)], dim=2)
    assert data["heads_stored"] == "all"
    _close_within_quantisation(got["image"], slots[..., visual].numpy())
    _close_within_quantisation(got["text"], slots[..., text].numpy())
    sinks = torch.stack([oracle.sinks[layer] for layer in range(lm.n_layers)])
    phi = torch.stack([oracle.phi[layer] for layer in range(lm.n_layers)])
    np.testing.assert_array_equal(got["sinks"], sinks.numpy())
    np.testing.assert_array_equal(got["phi"], phi.numpy())
    is_visual = torch.zeros(slots.shape[-1], dtype=torch.bool)
    is_visual[visual] = True
    nonsink = is_visual.clone()[None].repeat(lm.n_layers, 1)
    nonsink[:, :prompt_length] &= ~sinks
    s = slots[..., visual].sum(-1)
    r = (slots * nonsink[None, :, None]).sum(-1) / s
    np.testing.assert_allclose(got["image_mass"], s.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["ratio"], torch.where(s > 0, r, torch.nan).numpy(), rtol=1e-5, atol=1e-6)
    if view == "var":
        before = _oracle_rows(oracle, queries, lm.n_layers, prompt_length + len(oracle.tokens), before=True)
        np.testing.assert_array_equal(got["edited"], (before != rows).any(-1).numpy())
    return got


@pytest.mark.parametrize("name", MODELS)
def test_page_data_equals_the_runs(name):
    lm, page = _page(name)
    data = read_data(page.html)
    inputs = lm.prepare(demo_scene(name), QUESTION)
    base = check_view(lm, inputs, data, "base", oracle_run(lm, inputs, max_new_tokens=STEPS))
    var = check_view(lm, inputs, data, "var", oracle_run(lm, inputs, var=sl.VAR(), max_new_tokens=STEPS))
    # every tile's cells are the prompt positions of that tile, in row-major order
    grids = lm.check_inputs(inputs).images_of(0)
    assert [im["index"] for im in data["images"]] == [g.index for g in grids]
    for image, grid in zip(data["images"], grids, strict=True):
        assert [t["name"] for t in image["tiles"]] == [t.name for t in grid.tiles]
        for tile, expected in zip(image["tiles"], grid.tiles, strict=True):
            assert (tile["rows"], tile["cols"]) == tuple(expected.positions.shape)
            assert [data["visual_keys"][k] for k in tile["cells"]] == expected.positions.flatten().tolist()
    if name in ARCHS:  # the planted tiny built-ins have visual sinks VAR acts on
        assert var["edited"].any()
        n_prompt = sum(1 for q in data["views"]["base"]["queries"] if q < data["prompt_length"])
        edited = var["edited"][:n_prompt].any(-1)  # [query, layer]: prompt queries are shared by both runs
        assert not np.allclose(var["image"][:n_prompt, :, -1][edited], base["image"][:n_prompt, :, -1][edited])


def test_page_is_self_contained_and_states_its_sizes():
    _, page = _page("tiny-llava")
    text = page.html
    assert set(re.findall(r"https?://[^\s\"')]+", text)) <= {"http://www.w3.org/2000/svg"}  # a namespace, never fetched
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(?!data:)", text)
    assert "MB" in text and page.sizes["html"] == len(text.encode())
    assert page.data["sizes"]["attention_bytes"] > 0
    assert 'srcdoc="' in page._repr_html_()


def test_mean_only_when_every_head_would_not_fit(tmp_path):
    lm, page = _page("tiny-llava", max_mb=1e-3)
    data = read_data(page.save(tmp_path).read_text())
    assert data["heads_stored"] == "mean"
    inputs = lm.prepare(demo_scene("tiny-llava"), QUESTION)
    oracle = oracle_run(lm, inputs, max_new_tokens=STEPS)
    got = decode_view(data, "base")
    v = data["views"]["base"]
    rows = _oracle_rows(oracle, v["queries"], lm.n_layers, data["prompt_length"] + len(oracle.tokens))
    _close_within_quantisation(got["image"][:, :, 0], rows.mean(2)[..., data["visual_keys"]].numpy())
    assert got["ratio"].shape[-1] == lm.text_config.num_attention_heads + 1  # r and s of every head are kept


def test_without_var_there_is_one_view():
    _, page = _page("tiny-qwen2-vl", var=None)
    assert list(page.data["views"]) == ["base"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"heads": "some"}, "heads must be one of"), ({"max_mb": 0.0}, "max_mb must be > 0"),
     ({"max_new_tokens": 0}, "max_new_tokens must be >= 1")],
)
def test_bad_arguments_fail_before_loading(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        sl.explore("no-such-model", demo_scene("tiny-llava"), QUESTION, **kwargs)  # would fail to load otherwise


def test_missing_image_names_the_fix():
    with pytest.raises(FileNotFoundError, match="draw-scene"):
        sl.explore("no-such-model", "no/such.png", QUESTION)


def test_cli_writes_the_page_and_prints_its_sizes(tmp_path, capsys):
    from sinklens.cli import main

    scene = tmp_path / "scene.png"
    assert main(["draw-scene", "--model", "tiny-internvl", "--out", str(scene)]) == 0
    out = tmp_path / "explore"
    assert main(["explore", "--model", "tiny-internvl", "--image", str(scene), "--prompt", QUESTION, "--tau", "15",
                 "--max-new-tokens", "2", "--heads", "mean", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"explorer written to {out / 'index.html'}" in printed and "MB" in printed
    data = read_data((out / "index.html").read_text())
    assert data["params"]["tau"] == 15 and data["heads_stored"] == "mean" and set(data["views"]) == {"base", "var"}
    assert [t["name"] for t in data["images"][0]["tiles"]] == ["tile 0", "tile 1", "thumbnail"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--image", "no/such.png"], "draw-scene"), (["--max-mb", "0"], "--max-mb must be > 0"),
     (["--p", "2"], "p must be in [0, 1]"), (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1")],
)
def test_cli_bad_arguments_exit_2(tmp_path, capsys, extra, message):
    from sinklens.cli import main

    scene = tmp_path / "scene.png"
    assert main(["draw-scene", "--model", "tiny-llava", "--out", str(scene)]) == 0
    args = ["explore", "--model", "no-such-model", "--image", str(scene), "--prompt", "what ?", "--out", str(tmp_path)]
    assert main(args + extra) == 2  # before loading: the model name would fail otherwise
    assert message in capsys.readouterr().err


def test_two_images_in_one_prompt_are_laid_out_in_order():
    lm = loaded("tiny-qwen2-vl")
    images = [demo_scene("tiny-qwen2-vl"), demo_scene("tiny-llava").resize((56, 112))]
    page = sl.explore(lm, images, QUESTION, max_new_tokens=STEPS)
    data = read_data(page.html)
    inputs = lm.prepare(images, QUESTION)
    check_view(lm, inputs, data, "base", oracle_run(lm, inputs, max_new_tokens=STEPS))
    grids = lm.check_inputs(inputs).images_of(0)
    assert [im["index"] for im in data["images"]] == [0, 1]
    for image, grid in zip(data["images"], grids, strict=True):
        (tile,) = image["tiles"]
        assert [data["visual_keys"][k] for k in tile["cells"]] == grid.tiles[0].positions.flatten().tolist()
        assert (tile["rows"], tile["cols"]) == tuple(grid.tiles[0].positions.shape)
    shapes = [(im["tiles"][0]["rows"], im["tiles"][0]["cols"]) for im in data["images"]]
    assert shapes[0] != shapes[1]  # each image keeps its own grid (Qwen2-VL's follows the image's size)


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_a_path_to_a_16_bit_or_transparent_png_gives_the_page_the_picture_the_model_gets(mode, tmp_path):
    """`sl.explore(path)` reads the file as `lm.prepare(path)` does (16-bit scaled, alpha on white), not as PIL's
    convert("RGB") would (which clips 16-bit values): the same model inputs, so the same answer and pictures."""
    from PIL import Image

    from sinklens.explorer import _model_pixels, _png

    lm = loaded("tiny-llava")
    side = 96
    ramp = np.linspace(0, 1, side * side, dtype=np.float64).reshape(side, side)
    if mode == "I;16":
        picture = Image.fromarray((ramp * 65535).astype(np.uint16))  # a gradient over the whole 16-bit range
        assert picture.mode.startswith("I;16")
    else:
        pixels = np.stack([ramp * 255, 255 - ramp * 255, np.full_like(ramp, 90), (ramp > 0.5) * 255], -1)
        picture = Image.fromarray(pixels.astype(np.uint8), mode="RGBA")
    path = tmp_path / "picture.png"
    picture.save(path)
    with pytest.warns(UserWarning):
        page = sl.explore(lm, path, QUESTION, max_new_tokens=STEPS, var=None)
        inputs = lm.prepare(path, QUESTION)
    clipped = lm.prepare(Image.open(path).convert("RGB"), QUESTION)
    assert not torch.equal(inputs["pixel_values"], clipped["pixel_values"]), "the case must tell the two readings apart"
    expected = sl.NnsightRunner(lm).generate(inputs, [sl.FindSinks()], max_new_tokens=STEPS)
    assert page.data["views"]["base"]["generated_ids"] == [t for t in expected.step_logits[0].argmax(-1).tolist()]
    (tile,) = page.data["images"][0]["tiles"]
    assert tile["picture"] == _png(_model_pixels(lm, inputs)[0])
