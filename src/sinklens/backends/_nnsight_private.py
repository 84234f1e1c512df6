"""Every use sinklens makes of nnsight names that are not its public API, in one place.

nnsight offers no public way to do these few things; each is wrapped here so
that no other module names them, and `check()` (run by the test suite) fails
loudly, naming what moved, on an nnsight version where they are gone. nnterp
1.3 broke against nnsight 0.8 for want of this.

- `underlying_module(model)`: the HF module an nnsight model wraps (`model._module`),
  for a weightless client that still needs the config and the module tree;
- `request_env(model)` / `set_request_env(model, env)`: the environment a
  request carries (attention implementation), as the remote backend reads
  and a server applies it (`_remoteable_get_env`, `_remoteable_set_env`);
- `persistent_objects(model)`: what a server gives `RequestModel.deserialize`
  (`_remoteable_persistent_objects`);
- `push_into_frame(frame, values)`: put saved values into the caller's frame
  as the remote backend does (`nnsight.tracing.util.push`);
- `RequestModel`, `LocalSimulationBackend`, `Backend`, `pull_env`: internal
  classes and functions of the request machinery, for sinklens.testing.
"""

from __future__ import annotations

import importlib
from types import FrameType
from typing import Any

from sinklens.errors import MissingDependencyError

# (module, attribute) of every internal name used, for `check()`
_MODULE_NAMES = (
    ("nnsight.tracing.util", "push"),
    ("nnsight.schema.request", "RequestModel"),
    ("nnsight.intervention.backends.local", "LocalSimulationBackend"),
    ("nnsight.tracing.backend", "Backend"),
    ("nnsight.ndif", "pull_env"),
)
_MODEL_METHODS = ("_remoteable_get_env", "_remoteable_set_env", "_remoteable_persistent_objects")


def _internal(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise MissingDependencyError(_moved(f"{module}.{name}", e)) from e


def _moved(what: str, error: BaseException) -> str:
    import nnsight

    version = getattr(nnsight, "__version__", "?")
    return (
        f"nnsight {version} has no {what} ({error}); sinklens' remote path was written against nnsight 0.8. "
        "Install nnsight>=0.8,<0.9, or update sinklens/backends/_nnsight_private.py to the new name."
    )


def _method(model: Any, name: str) -> Any:
    method = getattr(model, name, None)
    if method is None:
        raise MissingDependencyError(_moved(f"{type(model).__name__}.{name}", AttributeError(name)))
    return method


def underlying_module(model: Any) -> Any:
    """The torch module an nnsight model wraps (its meta copy, for a weightless client)."""
    module = getattr(model, "_module", None)
    if module is None:
        raise MissingDependencyError(_moved(f"{type(model).__name__}._module", AttributeError("_module")))
    return module


def request_env(model: Any) -> dict[str, Any]:
    """The environment a request from `model` carries (its attention implementation, ...)."""
    return _method(model, "_remoteable_get_env")()


def set_request_env(model: Any, env: dict[str, Any]) -> None:
    """Apply a request's environment to a server's model, as NDIF does before running it."""
    _method(model, "_remoteable_set_env")(env)


def persistent_objects(model: Any) -> Any:
    """What a server hands `RequestModel.deserialize` for `model`."""
    return _method(model, "_remoteable_persistent_objects")()


def push_into_frame(frame: FrameType, values: dict[str, Any]) -> None:
    """Put values into a frame's locals, as nnsight's remote backend does with a request's saved values."""
    _internal("nnsight.tracing.util", "push")(frame, values)


def request_model() -> Any:
    """nnsight's `RequestModel` (serialize / deserialize a request)."""
    return _internal("nnsight.schema.request", "RequestModel")


def local_simulation_backend() -> Any:
    """nnsight's `LocalSimulationBackend` class (remote="local")."""
    return _internal("nnsight.intervention.backends.local", "LocalSimulationBackend")


def backend_base() -> Any:
    """nnsight's `Backend` base class."""
    return _internal("nnsight.tracing.backend", "Backend")


def pull_env() -> None:
    """Refresh the environment nnsight sends with a request (as its remote backend does first)."""
    _internal("nnsight.ndif", "pull_env")()


def check() -> None:
    """Raise `MissingDependencyError`, naming what moved, unless every internal name above exists."""
    for module, name in _MODULE_NAMES:
        _internal(module, name)
    from nnsight import TransformersModel

    for name in _MODEL_METHODS:
        if not callable(getattr(TransformersModel, name, None)):
            raise MissingDependencyError(_moved(f"TransformersModel.{name}", AttributeError(name)))
