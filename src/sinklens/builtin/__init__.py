"""The built-in models: toy-llava and the tiny models of the real transformers classes, built offline.

One record per built-in (`records.py`: how to build it, its demo scene, its
sink dimensions and visual sinks); the builders are fixtures that ship with
sinklens, so that the demo, the tests and the docs run with nothing
downloaded. `sinklens.load(name)` builds one from its record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from sinklens.builtin.records import BUILTIN_MODELS, BUILTIN_NAMES, DEFAULT_MODEL, BuiltIn, builtin

# name -> () -> (model, processor), from the records
BUILTINS: dict[str, Callable[[], tuple[Any, Any]]] = {record.name: record.build for record in BUILTIN_MODELS}


def demo_scene(name: str) -> Image.Image:
    """A scene whose white blocks the planted built-in `name` turns into visual sinks (toy-llava: a held-out scene)."""
    return builtin(name).scene()


__all__ = ["BUILTINS", "BUILTIN_MODELS", "BUILTIN_NAMES", "DEFAULT_MODEL", "BuiltIn", "builtin", "demo_scene"]
