"""`sinklens eval pope | vqa | captions`: a benchmark with a stack on or off, resumable where it writes rows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sinklens.cli import common
from sinklens.data.pope import SPLITS
from sinklens.errors import ParameterError
from sinklens.eval.settings import ModelSettings


def add_arguments(evaluate: argparse.ArgumentParser) -> None:
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    pope = benchmarks.add_parser("pope", help="POPE-style yes/no object probing on held-out synthetic scenes")
    pope.set_defaults(execute=execute_pope)
    common.add_model(pope)
    pope.add_argument("--split", choices=SPLITS, default="random")
    pope.add_argument("--n", type=int, default=None, help="number of questions (default: 300; with --data: all)")
    common.add_stack(pope, var_default=False)
    pope.add_argument("--vcd", action="store_true", help="visual contrastive decoding (with --var: VAR in both passes)")
    pope.add_argument("--vcd-alpha", type=float, default=1.0, help="VCD contrast strength (default: 1)")
    pope.add_argument("--vcd-beta", type=float, default=0.1, help="VCD plausibility cut-off (default: 0.1)")
    pope.add_argument("--max-new-tokens", type=int, default=3)
    common.add_shared_prefix(pope)
    _add_resumable_out(pope, "pope")
    _add_data(pope, "a POPE question file as its authors publish it (JSON lines: question_id, image, text, label)")

    vqa = benchmarks.add_parser("vqa", help="a VQA file of your own: yes/no, multiple-choice and short answers")
    vqa.set_defaults(execute=execute_vqa)
    common.add_model(vqa)
    _add_data(vqa, "JSON lines: image, question, answer, optional choices (answer = letter) and id", required=True)
    vqa.add_argument("--choice-suffix", default=None,
                     help="the line after a multiple-choice question's options (default: LLaVA-1.5's "
                          "'Answer with the option's letter from the given choices directly.')")  # fmt: skip
    vqa.add_argument("--n", type=int, default=None, help="the first n questions (default: all)")
    common.add_stack(vqa, var_default=False)
    vqa.add_argument("--max-new-tokens", type=int, default=10)
    common.add_shared_prefix(vqa)
    _add_resumable_out(vqa, "vqa")

    captions = benchmarks.add_parser("captions", help="caption accuracy per attribute on held-out synthetic scenes")
    captions.set_defaults(execute=execute_captions)
    common.add_model(captions)
    captions.add_argument("--n", type=int, default=100, help="number of held-out scenes (default: 100)")
    common.add_stack(captions, var_default=False)
    captions.add_argument("--max-new-tokens", type=int, default=48)
    common.add_out(captions, "folder for captions.json")
    captions.add_argument("--batch-size", type=int, default=1, help="scenes per forward pass (default: 1)")
    common.add_shared_prefix(captions)


def _add_resumable_out(command: argparse.ArgumentParser, kind: str) -> None:
    command.add_argument("--restart", action="store_true", help="discard a previous run in --out instead of resuming it")
    what = "one line per example" if kind == "pope" else "one line per question"
    common.add_out(command, f"folder for {kind}.jsonl ({what}) and {kind}.json")


def _add_data(command: argparse.ArgumentParser, what: str, *, required: bool = False) -> None:
    """--data, --images, --suffix and --batch-size of `eval pope` and `eval vqa`."""
    command.add_argument("--data", type=Path, required=required, default=None,
                         help=what + ("" if required else "; default: the synthetic benchmark"))  # fmt: skip
    command.add_argument("--images", type=Path, default=None, help="the folder --data's image paths are relative to")
    command.add_argument("--suffix", default=None,
                         help="with --data: the line appended to each question (default: LLaVA-1.5's "
                              "'Answer the question using a single word or phrase.'; '' for none)")  # fmt: skip
    command.add_argument("--batch-size", type=int, default=1,
                         help="questions per forward pass, left-padded (default: 1; answers do not depend on it)")  # fmt: skip


def _options(args: argparse.Namespace) -> Any:
    from sinklens.eval.loop import Options

    return Options(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, share_prefixes=args.shared_prefix)


def _eval_params(args: argparse.Namespace, lm: Any, find: Any) -> dict[str, Any]:
    """The stack's parameters as the run used them: VAR's only when VAR is on (they change nothing otherwise)."""
    params = common.params(args, lm, find)
    if not args.var:
        for key in ("rho", "p", "summ"):
            params.pop(key, None)
    return params


def _resumable(args: argparse.Namespace, kind: str, stack: list[Any], benchmark: Any) -> dict[str, Any]:
    """The load preamble of a resumable evaluation: lock --out (a busy folder is refused before loading), load, run."""
    from sinklens.eval.folder import RunFolder
    from sinklens.eval.loop import evaluate

    if args.n is not None and args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    benchmark = benchmark()  # the whole file and every image, checked before anything is locked or loaded
    if args.data is None and (args.images is not None or args.suffix is not None):
        raise ParameterError("--images and --suffix go with --data (a question file); without --data the "
                             "benchmark is synthetic")  # fmt: skip
    options = _options(args)
    ModelSettings.from_args(args).check()
    folder = RunFolder(args.out, kind)
    folder.lock()
    try:
        if args.restart:
            folder.restart()
        runner = common.open_model(args, checked=True)
        common.check_context(runner.loaded, 0, args.max_new_tokens)
        return evaluate(runner.loaded, runner, benchmark, out=folder, interventions=stack, options=options,
                        settings={"params": _eval_params(args, runner.loaded, stack[0])})  # fmt: skip
    finally:
        folder.unlock()


def execute_pope(args: argparse.Namespace) -> None:
    from sinklens.eval import pope

    stack = common.stack(args, with_var=args.var)  # check parameters before loading anything
    if args.vcd:
        from sinklens.interventions import VCD

        stack.append(VCD(alpha=args.vcd_alpha, beta=args.vcd_beta))
    common.check_generation(args)
    common.check_out_folder(args.out)
    if args.data is not None:
        questions = lambda: pope.from_file(args.data, args.images, args.n, suffix=args.suffix)  # noqa: E731
    else:
        questions = lambda: pope.synthetic(args.split, args.n or 300)  # noqa: E731
    result = _resumable(args, "pope", stack, questions)
    print(json.dumps({k: result[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")}))
    print(f"metrics written to {args.out / 'pope.json'}")


def execute_vqa(args: argparse.Namespace) -> None:
    from sinklens.eval import vqa

    stack = common.stack(args, with_var=args.var)  # check parameters before loading anything
    common.check_generation(args)
    common.check_out_folder(args.out)
    questions = lambda: vqa.from_file(args.data, args.images, args.n, suffix=args.suffix,  # noqa: E731
                                      choice_suffix=args.choice_suffix)  # fmt: skip
    result = _resumable(args, "vqa", stack, questions)
    print(json.dumps({"accuracy": round(result["accuracy"], 4), "n": result["n"],
                      **{k: round(v["accuracy"], 4) for k, v in result["per_type"].items()}}))  # fmt: skip
    print(f"metrics written to {args.out / 'vqa.json'}")


def execute_captions(args: argparse.Namespace) -> None:
    from sinklens.eval.captions import evaluate_captions

    stack = common.stack(args, with_var=args.var)
    if args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    options = _options(args)
    common.check_generation(args)
    common.check_out_folder(args.out)
    runner = common.open_model(args)
    lm = runner.loaded
    common.check_context(lm, 0, args.max_new_tokens)
    result = evaluate_captions(lm, runner, n=args.n, interventions=stack, options=options)
    result["params"] = common.params(args, lm, stack[0])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "captions.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: round(v, 3) for k, v in result["accuracy"].items()}))
    print(f"captions and scores written to {args.out / 'captions.json'}")
