"""Request shipping: what a remote or simulated nnsight run needs around its trace.

nnsight's `remote=True` sends a trace to NDIF, which runs it next to the weights
of a model it hosts; `remote="local"` serialises the same request, deserialises
it with local modules hidden (as a server would) and runs it here. sinklens
ships its hook functions, the run context and the ops they call *by value*
(`nnsight.register(sinklens)` for the length of the run), so the server needs
only what it has: torch, numpy, transformers, einops and nnsight. What travels,
what runs where and what it costs: docs/remote.md.

`remote` as a runner takes it: `False` (here), `True` (NDIF, checked first by
`sinklens.backends.ndif.ensure_ready`), `"local"`, or a request backend factory:
an object with `backend(model)` returning an nnsight backend, such as
`sinklens.testing.Simulation()`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol, runtime_checkable

from sinklens.backends.ndif import ensure_ready
from sinklens.errors import RemoteError


@runtime_checkable
class RequestBackend(Protocol):
    """Something that runs a captured request in nnsight's place (`sinklens.testing.Simulation`)."""

    def backend(self, model: Any) -> Any: ...


RemoteValue = bool | Literal["local"] | RequestBackend
# what runners annotate: checked by `check_remote_argument`, whose message lists the values (a run-time
# type checker would otherwise refuse a wrong one first, with its own message)
Remote = Any


def check_remote_argument(remote: Any) -> RemoteValue:
    """`remote` as a runner takes it: False, True, "local", or a request backend (a `Simulation`)."""
    if remote is False or remote is True or remote == "local" or isinstance(remote, RequestBackend):
        return remote
    raise RemoteError(
        f"remote must be False (run here), True (NDIF), \"local\" (nnsight's local simulation of NDIF) or a "
        f"sinklens.testing.Simulation(), got {remote!r}"
    )


@contextmanager
def shipping(loaded: Any, remote: RemoteValue) -> Iterator[None]:
    """For a remote or simulated run: check NDIF (remote=True), and ship sinklens by value meanwhile."""
    if remote is False:
        yield
        return
    if remote is True:
        ensure_ready(loaded.name)
    import cloudpickle
    import nnsight

    import sinklens

    registered = "sinklens" in cloudpickle.list_registry_pickle_by_value()
    if not registered:
        nnsight.register(sinklens)  # nnsight's documented way: ship a module's source with the request
    try:
        with unwrapped_checkers("sinklens"):
            yield
    finally:
        if not registered:
            cloudpickle.unregister_pickle_by_value(sinklens)


@contextmanager
def unwrapped_checkers(package: str) -> Iterator[None]:
    """Put back the plain functions of `package` that a run-time type checker wrapped, for a while.

    jaxtyping's import hook (`pytest --jaxtyping-packages=sinklens,...`) wraps
    every function, method and dataclass `__init__` of a package in a checker
    that lives in jaxtyping and holds weak references: neither can travel to a
    server. Inside this block the package's modules and classes hold the
    functions those checkers wrap (`__wrapped__`), so what is shipped is the
    plain code; on exit the checkers are back. Without such a hook (any normal
    run) there is nothing to put back.
    """
    swaps: list[tuple[Any, str, Any]] = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package or name.startswith(package + ".")):
            continue
        for owner_name, owner in list(vars(module).items()):
            # the package's own functions and classes, wherever they are imported (a module's globals
            # are what a function shipped by value carries)
            home = str(getattr(owner, "__module__", None) or "")
            if not (home == package or home.startswith(package + ".")):
                continue
            if inspect.isclass(owner) and owner.__module__ == name:
                for attribute, value in list(vars(owner).items()):
                    if _plain(value) is not value:
                        swaps.append((owner, attribute, value))
            if _plain(owner) is not owner:
                swaps.append((module, owner_name, owner))
    for owner, attribute, value in swaps:
        setattr(owner, attribute, _plain(value))
    try:
        yield
    finally:
        for owner, attribute, value in reversed(swaps):
            setattr(owner, attribute, value)


def _plain(value: Any) -> Any:
    """The function a checker wraps (functions, methods, properties, class- and static methods), else `value`."""
    if inspect.isfunction(value) and hasattr(value, "__wrapped__"):
        return inspect.unwrap(value)
    if isinstance(value, property) and value.fget is not None and hasattr(value.fget, "__wrapped__"):
        return property(_plain(value.fget), _plain(value.fset) if value.fset else None, None, value.__doc__)
    if isinstance(value, (classmethod, staticmethod)) and hasattr(value.__func__, "__wrapped__"):
        return type(value)(inspect.unwrap(value.__func__))
    return value


def trace_options(model: Any, remote: RemoteValue) -> dict[str, Any]:
    """Keyword arguments of `model.trace` / `model.generate` for a `remote` value."""
    if remote is False:
        return {}
    if isinstance(remote, RequestBackend):
        return {"backend": remote.backend(model)}
    return {"remote": remote}
