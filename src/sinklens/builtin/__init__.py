"""The built-in models: toy-llava and the tiny models of the real transformers classes, built offline.

One record per built-in (`records.py`: how to build it, its demo scene, its
sink dimensions and visual sinks); the builders are fixtures that ship with
sinklens, so that the demo, the tests and the docs run with nothing
downloaded. `sinklens.load(name)` builds one from its record.

`DEFAULT_MODEL` is here, with no import at all, for the command line's help;
the other names load the records (and torch) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

DEFAULT_MODEL = "toy-llava"

if TYPE_CHECKING:
    from sinklens.builtin.records import BUILTIN_MODELS, BUILTIN_NAMES, BUILTINS, BuiltIn, builtin, demo_scene

_LAZY = ("BUILTINS", "BUILTIN_MODELS", "BUILTIN_NAMES", "BuiltIn", "builtin", "demo_scene")

__all__ = ["DEFAULT_MODEL", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("sinklens.builtin.records"), name)
    raise AttributeError(f"module 'sinklens.builtin' has no attribute {name!r}")
