"""What every command shares: argument groups, the checks made before and after loading, the stack.

The one load preamble of every command that loads a model:

1. checks that need no model (parameters, paths, input files) raise before
   anything is loaded or locked;
2. `open_model` checks the model name (the closest built-in for a typo),
   loads it (or connects to NDIF) and checks the arguments that need the
   loaded model (--sink-dims against its width), before any compute.

Nothing here imports torch at import time: building the parser stays instant.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from sinklens.errors import OutputError, ParameterError
from sinklens.eval.settings import ModelSettings, add_model_arguments

REMOTE_HELP = (
    "off: run here; local: nnsight's local simulation of a remote request; ndif: run on NDIF "
    "(--model a hub id NDIF hosts; needs NDIF_API_KEY)"
)


def sink_dims(text: str) -> tuple[int, ...]:
    """--sink-dims: comma-separated integers."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sink-dims takes comma-separated integers, got {text!r}") from e


# --- argument groups ---------------------------------------------------------------------------------


def add_model(command: argparse.ArgumentParser, *, remote: bool = False) -> None:
    """--model and --attention (and --remote), as the studies take them."""
    add_model_arguments(command, remote_help=REMOTE_HELP if remote else None)


def add_stack(command: argparse.ArgumentParser, *, var_default: bool) -> None:
    """FindSinks' and VAR's parameters: --var, --tau / --tau-fraction, --rho, --p, --summ, --convention, --sink-dims."""
    command.add_argument("--var", action=argparse.BooleanOptionalAction, default=var_default,
                         help=f"apply VAR (default: {'on' if var_default else 'off'})")  # fmt: skip
    threshold = command.add_mutually_exclusive_group()
    threshold.add_argument("--tau", type=float, default=None,
                           help="sink threshold on phi (default: the model's registered one, else 20)")  # fmt: skip
    threshold.add_argument("--tau-fraction", type=float, default=None,
                           help="sink threshold as a fraction of sqrt(d_model), phi's ceiling")  # fmt: skip
    command.add_argument("--rho", type=float, default=0.8, help="image-centric threshold (default: 0.8)")
    command.add_argument("--p", type=float, default=0.6, help="share of sink attention moved (default: 0.6)")
    command.add_argument("--summ", type=float, default=0.2, help="minimum image attention of a head (default: 0.2)")
    command.add_argument("--convention", choices=("paper", "released"), default="paper")
    command.add_argument("--sink-dims", type=sink_dims, default=None, help="comma-separated; default: the model's known ones")


def add_shared_prefix(command: argparse.ArgumentParser) -> None:
    """--shared-prefix / --no-shared-prefix: each distinct image prefix computed once (the answers are the same)."""
    command.add_argument("--shared-prefix", action=argparse.BooleanOptionalAction, default=True,
                         help="compute each distinct image prefix once and continue every question from its cache "
                              "(default on; the answers are the same either way)")  # fmt: skip


def add_out(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--out", required=True, type=Path, help=what)


# --- checks that need no model: run before anything is loaded or computed --------------------------


def _check_writable(folder: Path, flag: str, path: Path) -> None:
    """Write and remove a probe file in `folder` (the nearest existing folder of `path`): permissions, read-only mounts."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".sinklens-write-check-")
        os.close(handle)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{flag} {path}: cannot write in {folder} ({e.strerror or e}); choose a folder you can write to"
        ) from e


def _nearest_existing(path: Path, flag: str, shown: Path) -> Path:
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{flag} {shown}: {folder} is a file, so no folder can be made under it; choose another path")
    return folder


def check_out_folder(path: Path, flag: str = "--out") -> None:
    """An output folder: not an existing file, and somewhere this process can write."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is an existing file; give a folder (the results are written inside it)")
    _check_writable(_nearest_existing(path.absolute(), flag, path), flag, path)


def check_out_image(path: Path, flag: str = "--out") -> None:
    """An output image file: a name with an image extension PIL writes, in a folder this process can write."""
    from PIL import Image

    if path.is_dir():
        raise OutputError(f"{flag} {path} is a directory; name an image file, such as {path / 'scene.png'}")
    extensions = Image.registered_extensions()
    if extensions.get(path.suffix.lower()) not in Image.SAVE:
        raise OutputError(
            f"{flag} {path} has no image extension PIL can write ({path.suffix or 'none'}); name a file such as "
            f"{path.with_suffix('.png')}"
        )
    _check_writable(_nearest_existing(path.absolute().parent, flag, path), flag, path)


def check_generation(args: argparse.Namespace) -> None:
    """--max-new-tokens and --sink-dims, as far as they can be checked without the model."""
    if args.max_new_tokens < 1:
        raise ParameterError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    dims = getattr(args, "sink_dims", None)
    if dims is not None and not dims:
        raise ParameterError("--sink-dims is empty; give comma-separated dimensions (e.g. 507) or leave it out")
    if dims and min(dims) < 0:
        raise ParameterError(f"--sink-dims must be residual-stream dimensions >= 0, got {min(dims)}")


def stack(args: argparse.Namespace, *, with_var: bool) -> list[Any]:
    """[FindSinks] or [FindSinks, VAR] from the arguments (their parameters are checked here, before loading)."""
    from sinklens.interventions import VAR, FindSinks

    find = FindSinks(dims=args.sink_dims, tau=args.tau, tau_fraction=args.tau_fraction, convention=args.convention)
    var = VAR(p=args.p, rho=args.rho, summ=args.summ, convention=args.convention)
    return [find, var] if with_var else [find]


# --- the load, and the checks against the loaded model ---------------------------------------------


def open_model(args: argparse.Namespace, *, checked: bool = False) -> Any:
    """The runner of the command's model (`runner.loaded` is the model), its arguments checked against it.

    `checked`: the model name was checked already (a command that locks its
    output folder checks the name before locking, and loads after).
    """
    settings = ModelSettings.from_args(args)
    if not checked:
        settings.check()
    runner = settings.open()
    dims = getattr(args, "sink_dims", None)
    lm = runner.loaded
    if dims and max(dims) >= lm.d_model:
        raise ParameterError(
            f"--sink-dims {max(dims)} is outside {lm.name}'s residual stream (width {lm.d_model}: dimensions "
            f"0..{lm.d_model - 1}). Find its sink dimensions with `sinklens discover-sink-dims --model {lm.name}`."
        )
    return runner


def check_context(lm: Any, n_prompt: int, max_new_tokens: int) -> None:
    """Generation runs every one of --max-new-tokens steps (EOS is suppressed): it must fit the model's context."""
    context = getattr(lm.text_config, "max_position_embeddings", None)
    if context is not None and n_prompt + max_new_tokens > context:
        raise ParameterError(
            f"--max-new-tokens {max_new_tokens} runs past {lm.name}'s context of {context} positions: the prompt "
            f"takes {n_prompt}. Use at most {max(context - n_prompt, 0)} (answers stop at the end-of-sequence token anyway)."
        )


def params(args: argparse.Namespace, lm: Any, find: Any) -> dict[str, Any]:
    """The stack's parameters as the run used them (tau as an absolute threshold, with the rule that chose it)."""
    return {
        "tau": round(find.threshold(lm.d_model, lm.default_tau), 4),
        "tau_rule": "--tau" if args.tau is not None else "--tau-fraction" if args.tau_fraction is not None
        else "model default" if lm.default_tau is not None else "paper (20)",
        "rho": args.rho, "p": args.p, "summ": args.summ, "convention": args.convention,
    }  # fmt: skip
