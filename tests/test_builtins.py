"""Every built-in's record is complete and consistent with the model it builds."""

from __future__ import annotations

import pytest

from sinklens.errors import ParameterError
from sinklens.builtin import BUILTINS
from sinklens.models import KNOWN, catalogue_for
from sinklens.builtin import DEFAULT_MODEL
from sinklens.builtin.records import BUILTIN_MODELS, BUILTIN_NAMES, builtin
from sinklens.builtin import demo_scene
from sinklens.models.spans import ImageSpans

from conftest import QUESTION, loaded


def test_one_record_per_name_and_every_registry_reads_the_records():
    assert len(set(BUILTIN_NAMES)) == len(BUILTIN_MODELS) and DEFAULT_MODEL in BUILTIN_NAMES
    assert list(BUILTINS) == list(BUILTIN_NAMES)
    for record in BUILTIN_MODELS:
        assert BUILTINS[record.name] is record.build
        entry = KNOWN[record.name]
        assert (entry.dims, entry.source, entry.tau, entry.tau_reason) == (
            record.sink_dims, record.sink_dims_source, record.tau, record.tau_reason
        )


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_the_record_describes_the_model_it_builds(name):
    record = builtin(name)
    lm = loaded(name)
    assert type(lm.model).__name__ == record.architecture
    assert record.architecture in catalogue_for(record.architecture).architectures
    assert lm.sink_dims == record.sink_dims and lm.sink_dims_source == record.sink_dims_source
    assert lm.default_tau == record.tau and (record.tau is None) == (record.tau_reason is None)
    # sink dimensions are coordinates of the residual stream
    assert record.sink_dims and all(0 <= dim < lm.d_model for dim in record.sink_dims)
    assert record.sink_dims_source.startswith("planted" if record.planted else "measured here")


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_the_demo_scene_renders_and_its_visual_sinks_are_cells_of_its_grids(name):
    record = builtin(name)
    scene = demo_scene(name)
    assert scene.size == record.scene().size and scene.tobytes() == record.scene().tobytes()  # drawn the same each time
    spans: ImageSpans = loaded(name).check_inputs(loaded(name).prepare(scene, QUESTION))
    (image,) = spans.images
    tiles = {tile.name: tuple(tile.positions.shape) for tile in image.tiles}
    for tile, row, col in record.visual_sinks:
        assert tile in tiles, f"{name}: no tile {tile!r} among {sorted(tiles)}"
        rows, cols = tiles[tile]
        assert 0 <= row < rows and 0 <= col < cols, f"{name}: cell ({row}, {col}) outside {tile}'s {rows} x {cols} grid"


def test_an_unknown_name_is_refused_naming_the_built_ins():
    with pytest.raises(ParameterError, match="tiny-llava"):
        demo_scene("someone/unknown-checkpoint")
