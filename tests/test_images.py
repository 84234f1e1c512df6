"""Every PIL mode becomes the 8-bit RGB image it shows: checked against numpy oracles per mode."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from sinklens.errors import ImageInputError
from sinklens.models.images import BACKGROUND, as_images, open_image, to_rgb
from sinklens.models.images import ImageConversionWarning


def rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int64)


def gray3(values: np.ndarray) -> np.ndarray:
    """The oracle's grayscale -> RGB: the same value in every channel."""
    return np.repeat(np.rint(values).astype(np.int64)[..., None], 3, axis=-1)


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint16, (3, 5)))
def test_16_bit_grayscale_is_scaled_not_clipped(values):
    converted = to_rgb(Image.fromarray(values))  # mode I;16
    np.testing.assert_array_equal(rgb(converted.image), gray3(values / 257.0))
    assert "16-bit" in converted.note


def test_16_bit_big_endian_reads_the_same_values():
    values = np.array([[0, 1000, 40000, 65535]], dtype=">u2")
    picture = Image.frombytes("I;16B", (4, 1), values.tobytes())
    np.testing.assert_array_equal(rgb(to_rgb(picture).image), gray3(values.astype(float) / 257.0))


def test_a_16_bit_png_on_disk_is_not_white(tmp_path):
    values = np.linspace(0, 30000, 64, dtype=np.uint16).reshape(8, 8)  # a dark scan
    Image.fromarray(values).save(tmp_path / "scan.png")
    opened = open_image(tmp_path / "scan.png")
    out = rgb(to_rgb(opened).image)
    np.testing.assert_array_equal(out, gray3(values / 257.0))
    assert out.max() < 130  # PIL's convert("RGB") clips it to 255 everywhere


@pytest.mark.parametrize(
    ("values", "expected", "note"),
    [
        (np.array([[0, 17, 255]], dtype=np.int32), np.array([[0, 17, 255]]), None),  # 8-bit values kept
        (np.array([[0, 257, 65535]], dtype=np.int32), np.array([[0, 1, 255]]), "16-bit"),
        (np.array([[-10, 0, 90]], dtype=np.int32), np.array([[0, 25.5, 255]]), "stretched"),
    ],
)
def test_32_bit_integer_grayscale(values, expected, note):
    converted = to_rgb(Image.fromarray(values, mode="I"))
    np.testing.assert_array_equal(rgb(converted.image), gray3(np.asarray(expected, dtype=float)))
    assert (converted.note is None) if note is None else (note in converted.note)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0.0, 0.5, 1.0]]), np.array([[0, 127.5, 255]])),  # fractions
        (np.array([[0.0, 2.0, 200.0]]), np.array([[0, 2, 200]])),  # 8-bit values
        (np.array([[-1.0, 0.0, 3.0]]), np.array([[0, 63.75, 255]])),  # stretched
    ],
)
def test_float_grayscale(values, expected):
    converted = to_rgb(Image.fromarray(values.astype(np.float32), mode="F"))
    np.testing.assert_array_equal(rgb(converted.image), gray3(expected))
    assert converted.note


def test_float_with_nan_is_refused():
    with pytest.raises(ImageInputError, match="nan_to_num"):
        to_rgb(Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), mode="F"))


def composite_oracle(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None] / 255.0
    return np.rint(color * a + np.array(BACKGROUND) * (1 - a)).astype(np.int64)


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, (2, 3, 4)))
def test_rgba_is_composited_on_white(values):
    converted = to_rgb(Image.fromarray(values, mode="RGBA"))
    np.testing.assert_allclose(rgb(converted.image), composite_oracle(values[..., :3], values[..., 3]), atol=1)
    assert (converted.note is None) == bool((values[..., 3] == 255).all())


def test_fully_transparent_pixels_show_the_background_and_the_note_says_so():
    values = np.zeros((2, 2, 4), dtype=np.uint8)  # black, fully transparent: convert("RGB") shows black
    values[0, 0] = (10, 20, 30, 255)
    converted = to_rgb(Image.fromarray(values, mode="RGBA"))
    assert rgb(converted.image)[1, 1].tolist() == list(BACKGROUND)
    assert rgb(converted.image)[0, 0].tolist() == [10, 20, 30]
    assert "75.0% of pixels" in converted.note and str(BACKGROUND) in converted.note


def test_la_and_pa_are_composited():
    la = np.array([[[0, 0], [100, 255]]], dtype=np.uint8)
    out = rgb(to_rgb(Image.fromarray(la, mode="LA")).image)
    assert out.tolist() == [[[255] * 3, [100] * 3]]
    pa = Image.new("PA", (1, 1), (0, 128))
    pa.putpalette([200, 0, 0])
    assert rgb(to_rgb(pa).image)[0, 0].tolist() == composite_oracle(np.array([200, 0, 0]), np.array(128)).tolist()


def test_premultiplied_modes_are_composited():
    rgba = Image.new("RGBA", (1, 1), (200, 100, 50, 255))
    assert rgb(to_rgb(rgba.convert("RGBa")).image)[0, 0].tolist() == [200, 100, 50]
    la = Image.new("LA", (1, 1), (80, 0)).convert("La")
    assert rgb(to_rgb(la).image)[0, 0].tolist() == list(BACKGROUND)


def test_a_palette_with_a_transparent_colour_is_composited():
    picture = Image.new("P", (2, 1))
    picture.putpalette([255, 0, 0, 0, 0, 255])
    picture.putpixel((1, 0), 1)
    picture.info["transparency"] = 0
    converted = to_rgb(picture)
    assert rgb(converted.image).tolist() == [[list(BACKGROUND), [0, 0, 255]]]
    assert converted.note


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("1", 1, (255, 255, 255)),
        ("L", 77, (77, 77, 77)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("CMYK", (0, 0, 0, 255), (0, 0, 0)),
        ("HSV", (85, 255, 255), (0, 255, 0)),
        ("RGB", (1, 2, 3), (1, 2, 3)),
    ],
)
def test_other_modes_go_through_pil(mode, color, expected):
    converted = to_rgb(Image.new(mode, (2, 2), color))
    assert rgb(converted.image)[0, 0].tolist() == list(expected)
    assert converted.note is None


def test_ycbcr_and_lab_keep_their_colour():
    red = np.array([255, 0, 0])
    for mode in ("YCbCr", "LAB"):
        back = rgb(to_rgb(Image.new("RGB", (1, 1), tuple(red)).convert(mode)).image)[0, 0]
        assert np.abs(back - red).max() <= 6, (mode, back)  # 8-bit LAB quantises


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (None, "is None; pass a PIL image"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "PIL.Image.fromarray"),
        (12, "is a int"),
        ([], "empty list"),
        ("https://example.org/cat.png", "does not download"),
        ("no/such/scene.png", "does not exist"),
    ],
)
def test_what_is_not_an_image_is_refused(image, message):
    with pytest.raises(ImageInputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        as_images(image)


def test_a_path_is_opened(tmp_path):
    Image.new("RGB", (3, 3), (9, 8, 7)).save(tmp_path / "a.png")
    (picture,) = as_images(str(tmp_path / "a.png"))
    assert picture.getpixel((0, 0)) == (9, 8, 7)
    assert len(as_images([tmp_path / "a.png", picture])) == 2


def test_prepare_takes_a_path_and_warns_about_transparency(tiny, scene, tmp_path):
    scene.save(tmp_path / "scene.png")
    from_path = tiny.prepare(str(tmp_path / "scene.png"), "What is in the image?")
    from_image = tiny.prepare(scene, "What is in the image?")
    for key in from_image:
        assert from_path[key].equal(from_image[key])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny.prepare(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "What is in the image?")
    assert any(issubclass(w.category, ImageConversionWarning) and "composited" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    ("image", "question", "message"),
    [
        ("no-such.png", "What is it?", "does not exist"),
        ("SCENE", "<image> What is it?", "Remove '<image>' from the question"),
    ],
)  # None and arrays: test_what_is_not_an_image_is_refused (under the tests' type checker prepare's annotation refuses them first)
def test_prepare_refuses_bad_input(tiny, scene, image, question, message):
    from sinklens.errors import SinklensError

    with pytest.raises(SinklensError, match=message.replace("(", r"\(")):
        tiny.prepare(scene if image == "SCENE" else image, question)
