"""Shared fixtures: tiny models of the real transformers classes, built offline."""

from __future__ import annotations

import pytest
import torch

from sinklens.models import load
from sinklens.models.tiny import draw_scene

QUESTION = "What is in the image?"


@pytest.fixture(scope="session")
def tiny():
    """tiny-llava with planted sinks (BOS and the two white patches of draw_scene)."""
    return load("tiny-llava")


@pytest.fixture(scope="session")
def scene():
    return draw_scene()


@pytest.fixture(scope="session")
def inputs(tiny, scene):
    return tiny.prepare(scene, QUESTION)


@pytest.fixture(scope="session")
def runner(tiny):
    from sinklens.backends.nnsight_backend import NnsightRunner

    return NnsightRunner(tiny)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()
