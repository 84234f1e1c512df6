"""Helpers for testing and measuring sinklens, not needed to use it: the remote-request simulation.

`Simulation` (nnsight's local simulation, measuring every request, or a request
served as NDIF serves it), `Payload`, `referenced_modules`. Imports nnsight.
"""

from sinklens.testing.remote import SERVER_PACKAGES, Payload, Simulation, measure, referenced_modules, serve

__all__ = ["SERVER_PACKAGES", "Payload", "Simulation", "measure", "referenced_modules", "serve"]
