"""Load models and describe them: hook catalogue, image spans, patch grid, sink dimensions."""

from sinklens.models.catalogue import HookCatalogue, catalogue_for, supported_architectures
from sinklens.models.load import load
from sinklens.models.loaded import LoadedModel, from_hf
from sinklens.models.sink_dims import KNOWN, SinkDims, known_sink_dims
from sinklens.models.spans import ImageGrid, ImageSpans, Tile

__all__ = [
    "KNOWN",
    "HookCatalogue",
    "ImageGrid",
    "ImageSpans",
    "LoadedModel",
    "SinkDims",
    "Tile",
    "catalogue_for",
    "from_hf",
    "known_sink_dims",
    "load",
    "supported_architectures",
]
