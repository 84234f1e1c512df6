"""Checkpoints on disk go through the same loading code as hub ids."""

from __future__ import annotations

import pytest
import torch

from sinklens import VAR, FindSinks, load
from sinklens.backends.nnsight_backend import NnsightRunner
from sinklens.errors import SinkDimensionError
from sinklens.models.tiny import TINY_SINK_DIM, build_tiny_llava


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llava-checkpoint")
    model, processor = build_tiny_llava()
    model.config._attn_implementation = "sdpa"  # what a hub checkpoint would default to
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_local_checkpoint_loads_eager_and_matches_the_builtin(checkpoint, tiny, inputs):
    lm = load(str(checkpoint))
    assert lm.text_config._attn_implementation == "eager"
    assert lm.name == str(checkpoint) and lm.sink_dims is None
    with torch.no_grad():
        torch.testing.assert_close(lm.model(**inputs).logits, tiny.model(**inputs).logits, rtol=0, atol=0)


def test_unknown_checkpoint_needs_sink_dims_then_runs_with_them(checkpoint, inputs):
    lm = load(str(checkpoint))
    runner = NnsightRunner(lm)
    with pytest.raises(SinkDimensionError, match="discover-sink-dims"):
        runner.forward(inputs, [FindSinks(), VAR()])
    result = runner.forward(inputs, [FindSinks(dims=(TINY_SINK_DIM,)), VAR()])
    assert result.ctx.sinks[2][0].nonzero().flatten().tolist() == [0, 9, 23]
