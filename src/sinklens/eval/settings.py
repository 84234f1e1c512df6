"""The settings every command and study shares: which model, on which attention route, run where.

The command line and the studies build one `ModelSettings` from their parsed
arguments (`ModelSettings.from_args`), check the model name before anything
loads (`check`), and open the runner through it (`open`): a local
`NnsightRunner`, nnsight's local simulation of a remote request, or NDIF
(`sinklens.backends.remote.connect`). Importing this module imports no torch.

>>> ModelSettings(model="tiny-llava", attention="rows")
ModelSettings(model='tiny-llava', attention='rows', remote='off')
>>> ModelSettings(attention="rows", remote="ndif")
Traceback (most recent call last):
...
sinklens.errors.ParameterError: --attention rows needs sinklens' attention function next to the model, and NDIF runs its own (eager): use --attention eager with --remote ndif, or --remote off/local with --attention rows
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from sinklens.builtin import DEFAULT_MODEL
from sinklens.errors import ParameterError
from sinklens.hf import ATTENTION_ROUTES, AttentionRoute

if TYPE_CHECKING:
    from sinklens.run import Runner

RemoteMode = Literal["off", "local", "ndif"]
REMOTE_MODES: tuple[str, ...] = get_args(RemoteMode)


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Which model a command or study runs (a built-in, hub id or path), its attention route, and where it runs.

    `remote`: "off" runs here, "local" through nnsight's local simulation of a
    remote request, "ndif" on NDIF's deployment of the model (a hub id; needs
    an API key).
    """

    model: str = DEFAULT_MODEL
    attention: AttentionRoute = "eager"
    remote: RemoteMode = "off"

    def __post_init__(self) -> None:
        if self.remote == "ndif" and self.attention == "rows":
            raise ParameterError(
                "--attention rows needs sinklens' attention function next to the model, and NDIF runs its own "
                "(eager): use --attention eager with --remote ndif, or --remote off/local with --attention rows"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelSettings:
        """The settings a parser made with `add_model_arguments` read."""
        return cls(model=args.model, attention=args.attention, remote=getattr(args, "remote", "off"))

    def check(self) -> None:
        """Refuse a model name that is neither a built-in, a folder nor a hub id, before anything loads.

        An NDIF run checks its own (the key and the hosted models) when it connects.
        """
        if self.remote != "ndif":
            from sinklens.models.load import check_model_name

            check_model_name(self.model)

    def open(self) -> Runner:
        """The runner these settings ask for; its model is `runner.loaded`."""
        if self.remote == "ndif":
            from sinklens.backends.remote import connect

            return connect(self.model)  # fails fast, naming what is missing: the API key, or the hosted models
        from sinklens.backends.nnsight_backend import NnsightRunner
        from sinklens.models.load import load

        return NnsightRunner(load(self.model, attention=self.attention), remote="local" if self.remote == "local" else False)


def add_model_arguments(parser: argparse.ArgumentParser, *, remote_help: str | None = None) -> None:
    """--model and --attention, and --remote when `remote_help` says what it does here."""
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"built-in name, hub id or local path (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--attention", choices=ATTENTION_ROUTES, default="eager",
        help="eager (default): every layer's full attention pattern; rows: sdpa, with explicit attention only "
        "for the rows the stack acts on (the same results, faster)",
    )  # fmt: skip
    if remote_help is not None:
        parser.add_argument("--remote", choices=REMOTE_MODES, default="off", help=remote_help)

