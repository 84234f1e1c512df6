"""Parameter checks shared by interventions: one message style, raised at construction."""

from __future__ import annotations

from numbers import Real
from typing import Literal, get_args

from sinklens.errors import ParameterError

# Members whose fields are Literal modes check them in `__post_init__` (`one_of`), with a message that
# names the allowed values.
Convention = Literal["paper", "released"]
CONVENTIONS: tuple[str, ...] = get_args(Convention)


def number(name: str, value: object) -> None:
    """A real number (a str such as '0.5' or a bool would compare wrongly, or not at all)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        hint = f" (write {name}={value}, without quotes)" if isinstance(value, str) else ""
        raise ParameterError(f"{name} must be a number, got {value!r} of type {type(value).__name__}{hint}")


def unit_interval(name: str, value: float) -> None:
    number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ParameterError(f"{name} must be in [0, 1], got {value}")


def positive(name: str, value: float) -> None:
    number(name, value)
    if not value > 0:
        raise ParameterError(f"{name} must be > 0, got {value}")


def convention(value: str) -> None:
    if value not in CONVENTIONS:
        raise ParameterError(
            f"convention must be 'paper' (the method as published, the default) or 'released' "
            f"(the authors' code, SPEC section 5), got {value!r}"
        )


def non_negative(name: str, value: float) -> None:
    number(name, value)
    if not value >= 0:
        raise ParameterError(f"{name} must be >= 0, got {value}")


def integer_in(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ParameterError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
