"""An interactive attention explorer: one self-contained HTML page for one image and prompt.

    import sinklens as sl
    page = sl.explore("tiny-llava", image, "What is in the image?", max_new_tokens=4)
    page.save("out/explore")      # out/explore/index.html, opens from disk in any browser
    page                          # in Jupyter: the same page, inline

The page shows, for any query token (prompt text after the first image, or a
generated token), layer and head (or the layer mean), the attention over the
image on its patch grids (every tile of LLaVA-NeXT / Qwen2-VL / InternVL
layouts), the attention over the text tokens, the sinks FindSinks marked
(visual and text) with their phi, the head's visual non-sink ratio and whether
it is image-centric at rho, and a before/after-VAR toggle. "Before" is a run
without VAR; "after" is a run with VAR, read by a hook placed after VAR at the
same `hook_pattern` point, so it is the pattern the model used. Each run
generates its own tokens (VAR may change them).

Built on the public API (`sl.load`, `LoadedModel.prepare`, `sl.NnsightRunner`,
`sl.Hook`, `sl.FindSinks`, `sl.VAR`, `result.ctx`), and it reads images through
`sinklens.models.images.rgb_images`, the function `LoadedModel.prepare` reads
them through, so the page draws the pictures the model got.
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from PIL import Image

import sinklens as sl
from sinklens.errors import ParameterError
from sinklens.models.images import ImageConversionWarning, rgb_images
from sinklens.explorer.pack import QUANTISATION, pack_view
from sinklens.explorer.record import record_run

# which heads a page keeps: every head, the layer mean, or every head when it fits the size budget
HeadsStored = Literal["auto", "all", "mean"]
HEAD_MODES: tuple[str, ...] = get_args(HeadsStored)
PICTURE_SIDE = 336  # longest side of an image drawn under its grid, in pixels
TOY_LLAVA_NOTE = (
    "toy-llava: no image token reaches phi 20 in any layer; at tau 16 sparse visual sinks appear in "
    "layers 23-24 only. Most maps here show no visual sink at all."
)

__all__ = ["Explorer", "explore"]


@dataclass(frozen=True)
class Explorer:
    """An explorer page: `html` (the whole self-contained file) and `data` (what it shows, as JSON)."""

    data: dict[str, Any]
    html: str

    def save(self, out: str | Path) -> Path:
        """Write `out/index.html` (the folder is created) and return its path."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "index.html"
        path.write_text(self.html, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        # an iframe keeps the page's ids, styles and key handlers apart from the notebook's
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:820px;border:0" '
            'sandbox="allow-scripts"></iframe>'
        )

    @property
    def sizes(self) -> dict[str, int]:
        """Bytes of the page and of its inlined data."""
        return {"html": len(self.html.encode("utf-8")), **self.data["sizes"]}


def explore(
    model: str | Any,
    image: Any,
    prompt: str,
    *,
    find: sl.FindSinks = sl.FindSinks(),
    var: sl.VAR | None = sl.VAR(),
    max_new_tokens: int = 16,
    heads: HeadsStored = "auto",
    max_mb: float = 16.0,
) -> Explorer:
    """Run `model` on `image` (a PIL image, a path, or a list of them) and `prompt`; the explorer page.

    `model` is a name for `sl.load` or a `LoadedModel`. `find` (default: the
    model's default tau) marks the sinks in both runs; `var=None` records the
    run without VAR only. `heads`: "all" keeps
    every head's attention, "mean" only the layer mean, "auto" every head
    when the quantised attention fits in `max_mb` megabytes, else the mean.
    """
    if heads not in HEAD_MODES:
        raise ParameterError(f"heads must be one of {HEAD_MODES}, got {heads!r}")
    if not max_mb > 0:
        raise ParameterError(f"max_mb must be > 0, got {max_mb}")
    if max_new_tokens < 1:
        raise ParameterError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    images = _images(image)
    loaded = sl.load(model) if isinstance(model, str) else model
    runner = sl.NnsightRunner(loaded)
    inputs = loaded.prepare(images, prompt)
    spans = loaded.check_inputs(inputs)
    base = record_run(runner, inputs, find, None, max_new_tokens=max_new_tokens)
    edited = record_run(runner, inputs, find, var, max_new_tokens=max_new_tokens) if var is not None else None
    data = _page_data(loaded, inputs, spans, images, prompt, find, var, base, edited, heads=heads, max_mb=max_mb)
    return Explorer(data=data, html=render(data))


def _images(image: Any) -> list[Image.Image]:
    """The pictures `LoadedModel.prepare` would give the model (`models.images.rgb_images`), its warnings included."""
    if isinstance(image, (list, tuple)) and not image:
        raise ParameterError("explore needs at least one image")
    pictures = []
    for converted in rgb_images(image, where="the image"):
        if converted.note:
            warnings.warn(f"the image: {converted.note}", ImageConversionWarning, stacklevel=3)
        pictures.append(converted.image)
    return pictures


def _png(picture: Image.Image) -> str:
    picture = picture.copy()
    picture.thumbnail((PICTURE_SIDE, PICTURE_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _model_pixels(loaded: Any, inputs: Any) -> list[Image.Image] | None:
    """The pixels the model saw, one picture per pixel_values entry (square and tiles layouts), or None."""
    pixels = inputs.get("pixel_values")
    processor = getattr(loaded.processor, "image_processor", None)
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if pixels is None or pixels.dim() != 4 or mean is None or std is None:
        return None
    values = pixels.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    values = (values.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(array) for array in values]


def _layout(loaded: Any, inputs: Any, spans: Any, images: list[Image.Image], visual_keys: list[int]) -> list[dict[str, Any]]:
    """Per image: its tiles, each with its grid of indices into the visual keys and the picture drawn under it."""
    index_of = {position: k for k, position in enumerate(visual_keys)}
    pixels = _model_pixels(loaded, inputs) if loaded.catalogue.grid in ("square", "tiles") else None
    tile_counter, out = 0, []
    for grid in spans.images_of(0):
        whole = _png(images[grid.index])
        tiles = []
        for tile in grid.tiles:
            rows, cols = tile.positions.shape
            cells = [index_of[int(p)] for p in tile.positions.flatten().tolist()]
            if tile.name == "class token":
                picture, source = None, "none: the class token is no patch"
            elif pixels is not None and loaded.catalogue.grid == "tiles":
                picture, source = _png(pixels[tile_counter]), "the tile's pixels as the model saw them"
                tile_counter += 1
            elif pixels is not None:
                picture, source = _png(pixels[grid.index]), "the pixels the model saw (after resize and crop)"
            else:
                picture, source = whole, "the image as given, stretched over the grid"
            tiles.append({"name": tile.name, "rows": int(rows), "cols": int(cols), "cells": cells,
                          "picture": picture, "picture_source": source})  # fmt: skip
        out.append({"index": grid.index, "start": grid.start, "stop": grid.stop, "tiles": tiles})
    return out


def _token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([int(token_id)]).replace("\n", "⏎")


def _view(loaded: Any, rec: Any, visual: torch.Tensor, *, per_head: bool) -> dict[str, Any]:
    """One run's attention, packed over the visual and the text keys, with its generated tokens and answer."""
    prompt_length = visual.shape[0]
    text_keys = (~visual).nonzero().flatten().tolist() + [prompt_length + k for k in range(len(rec.generated))]
    view = pack_view(rec, visual_keys=visual.nonzero().flatten().tolist(), text_keys=text_keys,
                     prompt_length=prompt_length, per_head=per_head)  # fmt: skip
    view["generated"] = [_token_text(loaded.tokenizer, t) for t in rec.generated]
    view["answer"] = loaded.decode(torch.tensor(rec.generated, dtype=torch.long))
    return view


def _page_data(loaded: Any, inputs: Any, spans: Any, images: list[Image.Image], prompt: str, find: Any, var: Any,
               base: Any, edited: Any, *, heads: str, max_mb: float) -> dict[str, Any]:  # fmt: skip
    ids = inputs["input_ids"][0].tolist()
    prompt_length = len(ids)
    visual = spans.mask[0].cpu()
    region = (spans.mask if spans.region is None else spans.region)[0].cpu()
    visual_keys = visual.nonzero().flatten().tolist()
    n_heads = base.rows.shape[2]
    runs = [("base", base)] + ([("var", edited)] if edited is not None else [])
    per_head_bytes = sum(
        len(rec.queries) * loaded.n_layers * (n_heads + 1) * (prompt_length + len(rec.generated)) for _, rec in runs
    )
    per_head = heads == "all" or (heads == "auto" and per_head_bytes <= max_mb * 1e6)
    views = {name: _view(loaded, rec, visual, per_head=per_head) for name, rec in runs}
    tau = find.threshold(loaded.d_model, loaded.default_tau)
    data = {
        "format": 1,
        "model": loaded.name,
        "prompt": prompt,
        "n_layers": loaded.n_layers,
        "n_heads": n_heads,
        "heads_stored": "all" if per_head else "mean",
        "prompt_length": prompt_length,
        "tokens": [_token_text(loaded.tokenizer, t) for t in ids],
        "kinds": ["visual" if visual[p] else "newline" if region[p] else "text" for p in range(prompt_length)],
        "visual_keys": visual_keys,
        "images": _layout(loaded, inputs, spans, images, visual_keys),
        "params": {
            "tau": round(float(tau), 4), "rho": var.rho if var is not None else sl.VAR().rho,
            "summ": var.summ if var is not None else sl.VAR().summ, "p": var.p if var is not None else None,
            "convention": var.convention if var is not None else find.convention,
            "var_layers": list(var.layers_for(loaded.n_layers)) if var is not None else [],
        },  # fmt: skip
        "quantisation": QUANTISATION,
        "note": TOY_LLAVA_NOTE if loaded.name == "toy-llava" else "",
        "views": views,
    }
    data["sizes"] = {
        "attention_bytes": sum(v["bytes"]["image_attn"] + v["bytes"]["text_attn"] for v in views.values()),
        "all_heads_bytes": per_head_bytes,
        "json_bytes": 0,
    }
    data["sizes"]["json_bytes"] = len(json.dumps(data))
    return data


def render(data: dict[str, Any]) -> str:
    """The self-contained page for `data`: template, style, script and data in one file."""
    assets = resources.files("sinklens.explorer")
    template = (assets / "page.html").read_text(encoding="utf-8")
    style = (assets / "page.css").read_text(encoding="utf-8")
    script = (assets / "page.js").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(f"sinklens explorer: {data['model']}")
    return (
        template.replace("{{TITLE}}", title)
        .replace("{{STYLE}}", style)
        .replace("{{SCRIPT}}", script)
        .replace("{{DATA}}", payload)
    )


def read_data(page: str) -> dict[str, Any]:
    """The JSON a page inlines (what `Explorer.data` was), read back from its HTML text."""
    start_tag = '<script type="application/json" id="sinklens-data">'
    start = page.index(start_tag) + len(start_tag)
    stop = page.index("</script>", start)
    return json.loads(page[start:stop])  # "<\\/" in the page is JSON's own escape of "/"

