"""`sinklens compare`: several stacks on the same questions, with paired statistics against the first.

    sinklens compare --model tiny-llava --n 60 --out runs/cmp \\
        --stack var="FindSinks(); VAR(rho=0.8)" --stack vaf="VAF()" --stack var+vaf="FindSinks(); VAR(); VAF()"

or the stacks from a TOML file (`--stacks stacks.toml`), a `[stacks]` table of
NAME = "SPEC". The baseline (no intervention) always runs as `baseline`; every
stack is compared with it, and `--pair A,B` adds a comparison of two stacks.
Specs: `sinklens.interventions.specs`. The questions are POPE's (synthetic, or a
file with --data), a VQA file (`--benchmark vqa --data FILE`), or captions of
synthetic scenes scored by CHAIR (`--benchmark captions`).
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
                         help="a stack to compare with the baseline, e.g. var='FindSinks(); VAR(rho=0.8)' (repeatable)")
    command.add_argument("--pair", action="append", default=[], metavar="A,B",
                         help="also compare stack B with stack A (repeatable)")
    command.add_argument("--stacks", type=Path, default=None, help="a TOML file with a [stacks] table of NAME = \"SPEC\"")
    command.add_argument("--benchmark", choices=("pope", "vqa", "captions"), default="pope",
                         help="POPE (default), a VQA file, or CHAIR on captions of synthetic scenes")
    command.add_argument("--split", choices=SPLITS, default="random", help="synthetic POPE split (without --data)")
    command.add_argument("--n", type=int, default=None,
                         help="the first n questions (default: 300 synthetic POPE, 100 captions; all of --data)")
    command.add_argument("--data", type=Path, default=None, help="a POPE or VQA question file (default: synthetic POPE)")
    command.add_argument("--images", type=Path, default=None, help="the folder --data's image paths are relative to")
    command.add_argument("--suffix", default=None, help="with --data: the line appended to each question")
    command.add_argument("--batch-size", type=int, default=1, help="questions per forward pass (default: 1)")
    command.add_argument("--max-new-tokens", type=int, default=None, help="default: 3 (POPE), 10 (VQA), 48 (captions)")
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
            raise ParameterError(f"--stack {text!r} is not NAME=SPEC; e.g. --stack var='FindSinks(); VAR(p=0.6)'")
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


def pairs_from(args: argparse.Namespace, names: list[str]) -> list[tuple[str, str]]:
    from sinklens.eval.compare import check_pairs

    pairs = []
    for text in args.pair:
        a, sep, b = text.partition(",")
        if not sep:
            raise ParameterError(f"--pair {text!r} is not A,B (two stack names)")
        pairs.append((a.strip(), b.strip()))
    check_pairs(pairs, names)
    return pairs


def _benchmark(args: argparse.Namespace) -> Any:
    if args.n is not None and args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    if args.benchmark == "captions":
        from sinklens.eval.captions import chair_benchmark

        if args.data is not None:
            raise ParameterError("--benchmark captions runs on synthetic scenes (their objects are known); drop --data")
        return chair_benchmark(args.n or 100)
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
    pairs = pairs_from(args, list(stacks))
    if args.max_new_tokens is None:
        args.max_new_tokens = {"pope": 3, "vqa": 10, "captions": 48}[args.benchmark]
    common.check_generation(args)
    check_batch_size(args.batch_size)
    common.check_out_folder(args.out)
    benchmark = _benchmark(args)
    ModelSettings.from_args(args).check()
    runner = common.open_model(args, checked=True)
    common.check_context(runner.loaded, 0, args.max_new_tokens)
    options = Options(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, share_prefixes=args.shared_prefix)
    summary = compare(runner.loaded, runner, benchmark, stacks, out=args.out, options=options, pairs=pairs)
    print(table(summary))
    print(json.dumps({name: round(stack["accuracy"], 4) for name, stack in summary["stacks"].items()}))
    print(f"written: {', '.join(str(args.out / f) for f in ('compare.json', 'compare.jsonl', 'compare.png'))}")
