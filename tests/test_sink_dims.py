"""The sink-dimension registry: known checkpoints, each entry saying where its numbers come from."""

from __future__ import annotations

import pytest

from sinklens.models.sink_dims import KNOWN, known_sink_dims

from conftest import ARCHS, loaded


@pytest.mark.parametrize(
    ("name", "dims"),
    [
        ("llava-hf/llava-1.5-7b-hf", (1415, 2533)),
        ("llava-hf/llava-1.5-13b-hf", (2100, 4743)),
        ("Qwen/Qwen2-VL-7B-Instruct", (458, 2570)),
        ("Qwen/Qwen2-VL-7B", (458, 2570)),
        ("OpenGVLab/InternVL2-8B", (3584,)),
        ("toy-llava", (507,)),
    ],
)
def test_known_checkpoints(name, dims):
    assert known_sink_dims(name).dims == dims


def test_every_entry_says_where_it_comes_from():
    for name, entry in KNOWN.items():
        assert entry.source.startswith(("planted", "measured here", "cited")), name
        assert entry.dims and all(isinstance(d, int) and d >= 0 for d in entry.dims), name
    assert known_sink_dims("someone/unknown-checkpoint") is None


@pytest.mark.parametrize("name", list(ARCHS))
def test_builtins_know_their_planted_dimension(name):
    lm = loaded(name)
    assert lm.sink_dims == (7,) and lm.sink_dims_source.startswith("planted")
    assert max(lm.sink_dims) < lm.text_config.hidden_size
