"""Pack recorded attention into the page's compact JSON, and read it back (for tests and users).

Attention rows are quantised to uint8, each (query, layer, head) row over the
image keys and over the text keys with its own scale (the row's maximum / 255),
so a value comes back within scale / 2 = 0.2% of its row's maximum: a map over
the image keeps its contrast even when a text sink holds most of the row.
Slot `H` of the head axis is the layer mean (averaged before quantising). Where
every head would exceed the size budget only the mean is kept. The image mass
`s` and the visual non-sink ratio `r` of every head and of the mean are kept as
float32 (exact up to float32), phi as float32.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from torch import Tensor

QUANT_LEVELS = 255
QUANTISATION = (
    "uint8 per (query, layer, head) row, separately over the image keys and the text keys, scale = the row's "
    "maximum / 255: each value within 0.2% of its row's maximum (scale / 2)"
)


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def unb64(text: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape)


def quantise(values: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """uint8 codes and float32 scales per row of the last axis: value ~= code * scale."""
    scale = values.amax(-1) / QUANT_LEVELS
    # clamp: an all-zero row (a query before the image) would divide by zero
    codes = torch.round(values / scale.clamp_min(1e-30)[..., None]).clamp(0, QUANT_LEVELS)
    return codes.to(torch.uint8).numpy(), scale.float().numpy()


def dequantise(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * scale[..., None]


def head_slots(rows: Tensor) -> Tensor:
    """[query, layer, head + 1, key]: every head, then the layer mean."""
    return torch.cat([rows, rows.mean(2, keepdim=True)], dim=2)


def ratios(rows: Tensor, visual: Tensor, sinks: Tensor) -> tuple[Tensor, Tensor]:
    """Image mass s and visual non-sink ratio r per (query, layer, slot) (NaN r where s = 0).

    `visual` is `[key]`, `sinks` `[layer, key]`: the sinks of each layer.
    """
    nonsink = visual[None, :] & ~sinks  # [layer, key]
    mass = (rows * visual.to(rows.dtype)).sum(-1)
    nonsink_mass = torch.einsum("qlhk,lk->qlh", rows, nonsink.to(rows.dtype))
    ratio = torch.where(mass > 0, nonsink_mass / mass.clamp_min(1e-30), torch.full_like(mass, float("nan")))
    return mass, ratio


def pack_view(rec: Any, *, visual_keys: list[int], text_keys: list[int], prompt_length: int,
              per_head: bool) -> dict[str, Any]:  # fmt: skip
    """One run's view: quantised image and text attention, s, r, phi, sinks (and VAR's edited rows)."""
    slots = head_slots(rec.rows)
    key_length = rec.rows.shape[-1]
    visual = torch.zeros(key_length, dtype=torch.bool)
    visual[visual_keys] = True
    sinks = torch.nn.functional.pad(rec.sinks, (0, key_length - prompt_length))  # generated tokens: never sinks
    mass, ratio = ratios(slots, visual, sinks)
    kept = slots if per_head else slots[:, :, -1:]
    image_codes, image_scale = quantise(kept[..., visual_keys])
    text_codes, text_scale = quantise(kept[..., text_keys])
    view = {
        "generated_ids": list(rec.generated),
        "queries": list(rec.queries),
        "text_keys": list(text_keys),
        "image_attn": b64(image_codes), "image_scale": b64(image_scale),
        "text_attn": b64(text_codes), "text_scale": b64(text_scale),
        "image_mass": b64(mass.numpy().astype(np.float32)), "ratio": b64(ratio.numpy().astype(np.float32)),
        "phi": b64(rec.phi.numpy().astype(np.float32)),
        "sinks": b64(rec.sinks.numpy().astype(np.uint8)),
        "bytes": {"image_attn": image_codes.nbytes + image_scale.nbytes, "text_attn": text_codes.nbytes + text_scale.nbytes},
    }  # fmt: skip
    if rec.before is not None:
        edited = (rec.before != rec.rows).any(-1)  # [query, layer, head]: rows VAR changed
        view["edited"] = b64(edited.numpy().astype(np.uint8))
        before_mass, before_ratio = ratios(head_slots(rec.before), visual, sinks)
        view["ratio_before_edit"] = b64(before_ratio.numpy().astype(np.float32))
        view["mass_before_edit"] = b64(before_mass.numpy().astype(np.float32))
    return view


def decode_view(data: dict[str, Any], view: str) -> dict[str, np.ndarray]:
    """The arrays of one view of a page's data, dequantised: image [q, l, slot, visual key], text, s, r, phi, sinks."""
    v = data["views"][view]
    n_q, n_l, n_h = len(v["queries"]), data["n_layers"], data["n_heads"]
    slots = n_h + 1 if data["heads_stored"] == "all" else 1
    n_vis, n_txt = len(data["visual_keys"]), len(v["text_keys"])
    out = {
        "image": dequantise(unb64(v["image_attn"], np.uint8, (n_q, n_l, slots, n_vis)),
                            unb64(v["image_scale"], np.float32, (n_q, n_l, slots))),
        "text": dequantise(unb64(v["text_attn"], np.uint8, (n_q, n_l, slots, n_txt)),
                           unb64(v["text_scale"], np.float32, (n_q, n_l, slots))),
        "image_mass": unb64(v["image_mass"], np.float32, (n_q, n_l, n_h + 1)),
        "ratio": unb64(v["ratio"], np.float32, (n_q, n_l, n_h + 1)),
        "phi": unb64(v["phi"], np.float32, (n_l, data["prompt_length"])),
        "sinks": unb64(v["sinks"], np.uint8, (n_l, data["prompt_length"])).astype(bool),
    }  # fmt: skip
    if "edited" in v:
        out["edited"] = unb64(v["edited"], np.uint8, (n_q, n_l, n_h)).astype(bool)
    return out
