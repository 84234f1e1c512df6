"""`sinklens compare`: several stacks on the same questions, with paired statistics against the first.

    sinklens compare --model tiny-llava --n 60 --out runs/cmp \\
        --stack baseline= --stack var="VAR" --stack pai="PAI(alpha=0.5)" --stack vcd+var="VAR + VCD"

or the stacks from a TOML file (`--stacks stacks.toml`), a `[stacks]` table of
NAME = "SPEC" in order (the first is the reference). Specs:
`sinklens.interventions.specs`. The questions are POPE's (synthetic, or a file
with --data) or a VQA file (`--benchmark vqa --data FILE`).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

from sinklens.cli import common
from sinklens.data.pope import SPLITS
from sinklens.errors import ParameterError
from sinklens.eval.settings import ModelSettings


def add_arguments(command: argparse.ArgumentParser) -> None:
    common.add_model(command)
    command.add_argument("--stack", action="append", default=[], metavar="NAME=SPEC",
                         help="a stack to compare, e.g. var='VAR(p=0.6)' or baseline= (repeatable; the first is the "
                              "reference)")  # fmt: skip
    command.add_argument("--stacks", type=Path, default=None, help="a TOML file with a [stacks] table of NAME = \"SPEC\"")
    command.add_argument("--benchmark", choices=("pope", "vqa"), default="pope")
    command.add_argument("--split", choices=SPLITS, default="random", help="synthetic POPE split (without --data)")
    command.add_argument("--n", type=int, default=None, help="the first n questions (default: 300 synthetic; all of --data)")
    command.add_argument("--data", type=Path, default=None, help="a POPE or VQA question file (default: synthetic POPE)")
    command.add_argument("--images", type=Path, default=None, help="the folder --data's image paths are relative to")
    command.add_argument("--suffix", default=None, help="with --data: the line appended to each question")
    command.add_argument("--batch-size", type=int, default=1, help="questions per forward pass (default: 1)")
    command.add_argument("--max-new-tokens", type=int, default=None, help="default: 3 (POPE), 10 (VQA)")
    common.add_shared_prefix(command)
    common.add_out(command, "folder for one sub-folder per stack and compare.json / .jsonl / .png")


def stacks_from(args: argparse.Namespace) -> dict[str, list[Any]]:
    """NAME -> members from --stacks (first) and --stack, every spec parsed and checked before loading."""
    from sinklens.eval.compare import check_stack_names
    from sinklens.interventions.specs import parse_stack

    pairs = list(_stack_file(args.stacks).items()) if args.stacks is not None else []
    for text in args.stack:
        name, sep, spec = text.partition("=")
        if not sep:
            raise ParameterError(f"--stack {text!r} is not NAME=SPEC; e.g. --stack var='VAR(p=0.6)', --stack baseline=")
        pairs.append((name.strip(), spec))
    check_stack_names([name for name, _ in pairs])
    return {name: parse_stack(spec) for name, spec in pairs}


def _stack_file(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ParameterError(f"--stacks {path} does not exist; give a TOML file with a [stacks] table") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ParameterError(f"--stacks {path} is not valid UTF-8 TOML: {e}") from e
    table = data.get("stacks")
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ParameterError(f'--stacks {path} needs a [stacks] table of NAME = "SPEC" strings, e.g. var = "VAR(p=0.6)"')
    return table


def _benchmark(args: argparse.Namespace) -> Any:
    if args.n is not None and args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    if args.benchmark == "vqa":
        from sinklens.eval import vqa

        if args.data is None:
            raise ParameterError("--benchmark vqa needs --data, a VQA question file (see docs/evaluation.md)")
        return vqa.from_file(args.data, args.images, args.n, suffix=args.suffix)
    from sinklens.eval import pope

    if args.data is not None:
        return pope.from_file(args.data, args.images, args.n, suffix=args.suffix)
    if args.images is not None or args.suffix is not None:
        raise ParameterError("--images and --suffix go with --data; without --data the benchmark is synthetic POPE")
    return pope.synthetic(args.split, args.n or 300)


def execute(args: argparse.Namespace) -> None:
    from sinklens.eval.compare import compare, table
    from sinklens.eval.loop import Options, check_batch_size

    stacks = stacks_from(args)  # every check that needs no model, before anything is loaded
    if args.max_new_tokens is None:
        args.max_new_tokens = 3 if args.benchmark == "pope" else 10
    common.check_generation(args)
    check_batch_size(args.batch_size)
    common.check_out_folder(args.out)
    benchmark = _benchmark(args)
    ModelSettings.from_args(args).check()
    runner = common.open_model(args, checked=True)
    common.check_context(runner.loaded, 0, args.max_new_tokens)
    options = Options(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, share_prefixes=args.shared_prefix)
    summary = compare(runner.loaded, runner, benchmark, stacks, out=args.out, options=options)
    print(table(summary))
    print(json.dumps({name: round(stack["accuracy"], 4) for name, stack in summary["stacks"].items()}))
    print(f"written: {', '.join(str(args.out / f) for f in ('compare.json', 'compare.jsonl', 'compare.png'))}")
