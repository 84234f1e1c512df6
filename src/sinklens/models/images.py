"""Images as the models take them: 8-bit RGB, whatever the file's PIL mode.

`to_rgb` converts every PIL mode without losing what the picture shows:

- 16-bit grayscale (`I;16`, `I;16B`, `I;16L`, `I;16N`) is scaled from 0-65535 to
  0-255 (PIL's own `convert("RGB")` clips it, so most 16-bit scans turn white);
- 32-bit integer (`I`) values are taken as 8-bit when they all lie in 0-255, as
  16-bit when they lie in 0-65535, and stretched from their minimum to their
  maximum otherwise; floating point (`F`) values as fractions when they lie in
  0-1, as 8-bit values when they lie in 0-255, and stretched otherwise;
- transparency (`RGBA`, `LA`, `PA`, premultiplied `RGBa`/`La`, and `P`/`L`/`RGB`
  images with a transparent colour) is composited on `BACKGROUND` (white);
- every other mode (`1`, `L`, `P`, `CMYK`, `YCbCr`, `LAB`, `HSV`, `RGBX`) goes through PIL's conversion.

Each conversion that changes values says so in `Converted.note` (`sinklens run`
writes the notes to result.json). `open_image` reads a file and `as_images`
accepts what `LoadedModel.prepare` takes: a PIL image, a path, or a list of them.

>>> from PIL import Image
>>> converted = to_rgb(Image.new("I;16", (2, 2), 65535))
>>> converted.image.getpixel((0, 0)), converted.note
((255, 255, 255), '16-bit grayscale (mode I;16) scaled from 0-65535 to 0-255')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sinklens.errors import ImageInputError, MissingImageError

BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageConversionWarning(UserWarning):
    """An image's values were changed to make it 8-bit RGB: 16-bit scaled, transparency composited."""


@dataclass(frozen=True)
class Converted:
    """An 8-bit RGB image, and what the conversion did to its values (None when nothing worth saying)."""

    image: Image.Image
    note: str | None


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L").convert("RGB")


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high == low else (values - low) * (255.0 / (high - low))


def _deep_gray(picture: Image.Image) -> Converted:
    """16-bit, 32-bit integer and float grayscale to 8-bit RGB, by the rules of the module docstring."""
    mode = picture.mode
    values = np.asarray(picture).astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageInputError(
            f"the image (mode {mode}) holds NaN or infinite values; replace them (e.g. numpy.nan_to_num) "
            "and save it again"
        )
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode in _SIXTEEN_BIT:
        return Converted(_gray(values * (255.0 / 65535.0)), f"16-bit grayscale (mode {mode}) scaled from 0-65535 to 0-255")
    if mode == "F" and low >= 0 and high <= 1:
        return Converted(_gray(values * 255.0), "floating-point grayscale (mode F) in 0-1 scaled to 0-255")
    if low >= 0 and high <= 255:
        return Converted(_gray(values), None if mode == "I" else f"grayscale (mode {mode}) in 0-255 taken as 8-bit")
    if mode == "I" and low >= 0 and high <= 65535:
        return Converted(_gray(values * (255.0 / 65535.0)), "32-bit grayscale (mode I) in 0-65535 scaled as 16-bit to 0-255")
    return Converted(_gray(_stretch(values)), f"grayscale (mode {mode}) stretched from [{low:g}, {high:g}] to 0-255")


def _composite(picture: Image.Image, background: tuple[int, int, int]) -> Converted:
    """Transparency composited on `background`; fully opaque images lose nothing and get no note."""
    if picture.mode == "La":  # premultiplied: PIL converts it to LA, not to RGBA
        picture = picture.convert("LA")
    rgba = picture.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.size == 0 or alpha.min() == 255:
        return Converted(rgba.convert("RGB"), None)
    share = float((alpha < 255).mean())
    flat = Image.new("RGBA", rgba.size, (*background, 255))
    composited = Image.alpha_composite(flat, rgba).convert("RGB")
    return Converted(
        composited,
        f"transparency (mode {picture.mode}, {share:.1%} of pixels not opaque) composited on the background {background}",
    )


def to_rgb(picture: Image.Image, *, background: tuple[int, int, int] = BACKGROUND) -> Converted:
    """`picture` as 8-bit RGB: deep grayscale scaled, transparency composited on `background` (see the module)."""
    if not isinstance(picture, Image.Image):
        raise ImageInputError(f"to_rgb takes a PIL image, got {type(picture).__name__}")
    mode = picture.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _deep_gray(picture)
    if mode in _ALPHA or picture.has_transparency_data:
        return _composite(picture, background)
    if mode == "RGB":
        return Converted(picture, None)
    return Converted(picture.convert("RGB"), None)


def open_image(path: str | os.PathLike[str], *, what: str = "the image") -> Image.Image:
    """Read an image file fully (so a corrupt file fails here, not in the model), naming the fix when it cannot."""
    path = Path(path)
    if path.is_dir():
        raise ImageInputError(f"{what} {path} is a directory; give an image file (PNG, JPEG, ...) inside it")
    if not path.exists():
        raise MissingImageError(
            f"{what} {path} does not exist; check the path, or draw a scene with `sinklens draw-scene --out PATH`"
        )
    try:
        with Image.open(path) as picture:
            picture.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageInputError(
            f"{what} {path} cannot be read as an image ({type(e).__name__}: {e}); give a PNG or JPEG file, "
            "or open and re-save it with an image editor"
        ) from e
    return picture


def _one(image: Any, where: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        if str(image).startswith(("http://", "https://")):
            raise ImageInputError(
                f"{where} is a URL ({image}); sinklens does not download. Save the image and pass its path or a PIL image."
            )
        return open_image(image, what=where)
    if image is None:
        raise ImageInputError(f"{where} is None; pass a PIL image (PIL.Image.open(path)) or a path to an image file")
    if hasattr(image, "__array__") or hasattr(image, "shape"):
        raise ImageInputError(
            f"{where} is an array ({type(image).__name__}); convert it to a PIL image first: "
            "PIL.Image.fromarray(array) for a height x width x 3 uint8 array"
        )
    raise ImageInputError(f"{where} is a {type(image).__name__}; pass a PIL image or a path to an image file")


def as_images(image: Any, *, where: str = "the image") -> list[Image.Image]:
    """The images of one prompt: a PIL image, a path (str or Path), or a list/tuple of those (shown in order)."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ImageInputError(f"{where} is an empty {type(image).__name__}; give at least one image per prompt")
        return [_one(item, f"{where} {i}") for i, item in enumerate(image)]
    if isinstance(image, Sequence) and not isinstance(image, (str, bytes)):
        return as_images(list(image), where=where)
    return [_one(image, where)]


def rgb_images(image: Any, *, where: str = "the image") -> list[Converted]:
    """The images of one prompt (as `as_images` takes them) converted to 8-bit RGB by `to_rgb`: what a model gets."""
    return [to_rgb(picture) for picture in as_images(image, where=where)]
