"""Figures and JSON for the studies: subplots on the Agg backend, maps over images, means, plain JSON values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def short(question: str) -> str:
    """A question without POPE's answer instruction, for panel titles."""
    return question.split(" Answer")[0]


def figure(*args: Any, **kwargs: Any) -> Any:
    """`plt.subplots` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def mean_and_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (n - 1) and count of a list of numbers."""
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def overlay(ax: Any, image: Any, grid: torch.Tensor, *, sinks: torch.Tensor | None = None, title: str = "") -> Any:
    """Draw a `[row, col]` attention grid over the image (bilinear), with sink cells marked by white crosses."""
    import numpy as np

    width, height = image.size
    rows, cols = grid.shape
    ax.imshow(image)
    shown = ax.imshow(grid.float().numpy(), cmap="jet", alpha=0.5, extent=(0, width, height, 0), interpolation="bilinear")
    if sinks is not None and sinks.any():
        r, c = np.nonzero(sinks.numpy())
        ax.scatter((c + 0.5) * width / cols, (r + 0.5) * height / rows, marker="x", s=18, c="white", linewidths=1.0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def plain(value: Any) -> Any:
    """JSON-ready: tensors to lists, floats rounded to 6 significant digits, NaN to None."""
    if isinstance(value, torch.Tensor):
        return plain(value.tolist())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")
    if isinstance(value, Path):
        return str(value)
    return value
