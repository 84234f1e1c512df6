"""Errors sinklens raises. Each one says what was observed and what to do about it.

Every class derives from `SinklensError` and from the builtin type a caller would
catch without knowing sinklens (`ValueError`, `KeyError`, ...).
"""

from __future__ import annotations


class SinklensError(Exception):
    """Base class of every error raised by sinklens."""


class ParameterError(SinklensError, ValueError):
    """A parameter is outside the range where it means something."""


class ImageSpanError(SinklensError, ValueError):
    """The prompt's image tokens are missing or disagree with the image."""


class AttentionImplementationError(SinklensError, ValueError):
    """The model computes attention without a pattern that can be hooked (sdpa, flash)."""


class UnknownArchitectureError(SinklensError, KeyError):
    """No hook catalogue file describes this model class."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CatalogueError(SinklensError, ValueError):
    """A hook catalogue file is malformed, or one of its paths does not resolve."""


class HookNameError(SinklensError, KeyError):
    """A hook name is not one of the TransformerLens-style names sinklens knows."""

    def __str__(self) -> str:
        return str(self.args[0])


class SinkDimensionError(SinklensError, ValueError):
    """No sink dimensions are known or given for the model."""


class MissingDependencyError(SinklensError, ImportError):
    """An optional package a feature needs is not installed."""


class PaddingError(SinklensError, ValueError):
    """A batch is padded on the right; sinklens and generation need left padding."""


class StackError(SinklensError, TypeError):
    """A stack member is not an intervention, a Hook or a (hook name, fn) pair, or members clash."""


class HookContractError(SinklensError, RuntimeError):
    """A hook function broke what its Hook declares: a read-only hook wrote, or a write changed the shape."""


class NonFiniteError(HookContractError):
    """A hook function wrote NaN or infinite values (the message names the hook and its point)."""


class LayerError(SinklensError, ValueError):
    """A hook or a member names a layer the model does not have."""


class ShapeError(SinklensError, ValueError):
    """Tensors given to an op do not fit together (the message gives the shapes)."""


class PassError(SinklensError, ValueError):
    """Inputs or members disagree about the passes of a multi-pass run (VCD's image and noised passes)."""


class BackendError(SinklensError, RuntimeError):
    """A backend cannot run this model or this request (the message names what it can do instead)."""


class MissingSinksError(SinklensError, RuntimeError):
    """An intervention needs the sink sets of a layer that no FindSinks before it has found."""


class RemoteError(SinklensError, RuntimeError):
    """A remote (NDIF) run cannot start: no API key, a model NDIF does not host, or a bad `remote=` value."""


class ImageInputError(SinklensError, ValueError):
    """An image argument is not an image sinklens can read: None, an array, a directory, a corrupt file."""


class MissingImageError(ImageInputError, FileNotFoundError):
    """An image file that does not exist."""


class UnknownModelError(SinklensError, KeyError):
    """A model name is neither a built-in, a local folder, nor a hub id this machine can load."""

    def __str__(self) -> str:
        return str(self.args[0])


class WeightsError(SinklensError, ValueError):
    """A weights file (toy-llava's projector or adapter, a cache entry) does not fit the model it is for."""


class CacheError(SinklensError, RuntimeError):
    """A cache entry (toy-llava's converted parts or assembled model) could not be built or does not fit."""


class UnsupportedError(SinklensError, NotImplementedError):
    """A task or mode sinklens does not run (the message says which it does run)."""


class OutputError(SinklensError, OSError):
    """An output path cannot be written: an existing file where a folder is wanted, a read-only folder."""
