"""Command line: `sinklens run`, `eval pope`, `discover-sink-dims`, `explore` and `draw-scene`.

    sinklens draw-scene --out scene.png
    sinklens run --image scene.png --prompt "What is in the image?" --var --out out/
    sinklens eval pope --split random --n 300 --var --out out/pope
    sinklens eval pope --data coco_pope_random.json --images val2014/ --batch-size 8 --out out/pope
    sinklens eval vqa --data questions.jsonl --images images/ --out out/vqa
    sinklens discover-sink-dims --out out/dims
    sinklens explore --image scene.png --prompt "Describe the image." --out out/explore

The model defaults to toy-llava; `--model` takes a built-in name, a hub id or a local path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sinklens.errors import OutputError, ParameterError, SinklensError, UnknownModelError


def _dims(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sink-dims takes comma-separated integers, got {text!r}") from e


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


def _check_out_folder(path: Path, flag: str = "--out") -> None:
    """An output folder: not an existing file, and somewhere this process can write."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is an existing file; give a folder (the results are written inside it)")
    _check_writable(_nearest_existing(path.absolute(), flag, path), flag, path)


def _check_out_image(path: Path, flag: str = "--out") -> None:
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


def _check_model(args: argparse.Namespace) -> None:
    """A model name that is not a built-in, a folder or a hub id fails here, naming the closest built-in."""
    from sinklens.models.load import check_model_name

    check_model_name(args.model)


def _check_new_tokens(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise ParameterError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")


def _check_dims_sign(args: argparse.Namespace) -> None:
    dims = getattr(args, "sink_dims", None)
    if dims is not None and not dims:
        raise ParameterError("--sink-dims is empty; give comma-separated dimensions (e.g. 507) or leave it out")
    if dims and min(dims) < 0:
        raise ParameterError(f"--sink-dims must be residual-stream dimensions >= 0, got {min(dims)}")


# --- checks against the loaded model: run right after loading, before any compute ------------------


def _check_dims_width(args: argparse.Namespace, lm: Any) -> None:
    dims = getattr(args, "sink_dims", None)
    if dims and max(dims) >= lm.d_model:
        raise ParameterError(
            f"--sink-dims {max(dims)} is outside {lm.name}'s residual stream (width {lm.d_model}: dimensions "
            f"0..{lm.d_model - 1}). Find its sink dimensions with `sinklens discover-sink-dims --model {lm.name}`."
        )


def _context(lm: Any) -> int | None:
    return getattr(lm.text_config, "max_position_embeddings", None)


def _check_context(lm: Any, n_prompt: int, max_new_tokens: int) -> None:
    """Generation runs every one of --max-new-tokens steps (EOS is suppressed): it must fit the model's context."""
    context = _context(lm)
    if context is not None and n_prompt + max_new_tokens > context:
        raise ParameterError(
            f"--max-new-tokens {max_new_tokens} runs past {lm.name}'s context of {context} positions: the prompt "
            f"takes {n_prompt}. Use at most {max(context - n_prompt, 0)} (answers stop at the end-of-sequence token anyway)."
        )


def _add_model(command: argparse.ArgumentParser) -> None:
    from sinklens.builtin import DEFAULT_MODEL

    command.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"built-in name, hub id or local path (default: {DEFAULT_MODEL})"
    )
    command.add_argument(
        "--attention", choices=ATTENTION_CHOICES, default="eager",
        help="eager (default): every layer's full attention pattern; rows: sdpa, with explicit attention only "
        "for the rows the stack acts on (the same results, faster)",
    )


ATTENTION_CHOICES = ("eager", "rows")  # sinklens.models.loaded.ATTENTION_ROUTES (not imported: --help stays fast)


def _check_remote_attention(remote: str, attention: str) -> None:
    """NDIF runs its own copy of the model with eager attention: the rows route runs only here."""
    if remote == "ndif" and attention == "rows":
        raise ParameterError(
            "--attention rows needs sinklens' attention function next to the model, and NDIF runs its own "
            "(eager): use --attention eager with --remote ndif, or --remote off/local with --attention rows"
        )


def _add_stack(command: argparse.ArgumentParser, *, var_default: bool) -> None:
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
    command.add_argument("--sink-dims", type=_dims, default=None, help="comma-separated; default: the model's known ones")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sinklens", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="find sinks and answer a question about an image, with and without VAR")
    _add_model(run)
    run.add_argument(
        "--image", required=True, type=Path, action="append",
        help="the image; repeat for several images in one prompt (shown in order)",
    )
    run.add_argument("--prompt", required=True, help="the question about the image")
    _add_stack(run, var_default=True)
    run.add_argument("--max-new-tokens", type=int, default=64,
                     help="longest answer in tokens; answers stop at the end-of-sequence token (default: 64)")
    run.add_argument(
        "--remote", choices=("off", "local", "ndif"), default="off",
        help="off: run here; local: nnsight's local simulation of a remote request; ndif: run on NDIF "
        "(--model a hub id NDIF hosts; needs NDIF_API_KEY)",
    )
    run.add_argument("--out", required=True, type=Path, help="folder for result.json")

    evaluate = commands.add_parser("eval", help="evaluate on a benchmark")
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    pope = benchmarks.add_parser("pope", help="POPE-style yes/no object probing on held-out synthetic scenes")
    _add_model(pope)
    pope.add_argument("--split", choices=("random", "popular", "adversarial"), default="random")
    pope.add_argument("--n", type=int, default=None, help="number of questions (default: 300; with --data: all)")
    _add_stack(pope, var_default=False)
    pope.add_argument("--vcd", action="store_true", help="visual contrastive decoding (with --var: VAR in both passes)")
    pope.add_argument("--vcd-alpha", type=float, default=1.0, help="VCD contrast strength (default: 1)")
    pope.add_argument("--vcd-beta", type=float, default=0.1, help="VCD plausibility cut-off (default: 0.1)")
    pope.add_argument("--max-new-tokens", type=int, default=3)
    pope.add_argument("--restart", action="store_true", help="discard a previous run in --out instead of resuming it")
    pope.add_argument("--out", required=True, type=Path, help="folder for pope.jsonl (one line per example) and pope.json")
    _add_eval_data(pope, "a POPE question file as its authors publish it (JSON lines: question_id, image, text, label)")
    _add_vqa(benchmarks)

    captions = benchmarks.add_parser("captions", help="caption accuracy per attribute on held-out synthetic scenes")
    _add_model(captions)
    captions.add_argument("--n", type=int, default=100, help="number of held-out scenes (default: 100)")
    _add_stack(captions, var_default=False)
    captions.add_argument("--max-new-tokens", type=int, default=48)
    captions.add_argument("--out", required=True, type=Path, help="folder for captions.json")
    captions.add_argument("--batch-size", type=int, default=1, help="scenes per forward pass (default: 1)")

    discover = commands.add_parser("discover-sink-dims", help="find the sink dimensions of a model from data")
    _add_model(discover)
    discover.add_argument("--prompts", type=int, default=8, help="number of scene prompts (default: 8)")
    threshold = discover.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, default=None,
                           help="absolute threshold on |x_d|/RMS(x) (default: 20, as SPEC says)")  # fmt: skip
    threshold.add_argument("--threshold-fraction", type=float, default=None,
                           help="threshold as a fraction of sqrt(d_model), e.g. 0.3125 = the paper's 20 at width 4096")  # fmt: skip
    discover.add_argument("--first-layer", type=int, default=2)
    discover.add_argument("--out", required=True, type=Path, help="folder for sink_dims.json and sink_dims.png")

    _add_explore(commands)

    scene = commands.add_parser("draw-scene", help="draw a scene (a PNG): a synthetic one, or a tiny built-in's demo")
    scene.add_argument("--split", choices=("train", "heldout"), default="heldout")
    scene.add_argument("--index", type=int, default=0)
    scene.add_argument("--model", default=None,
                       help="a tiny-* built-in: draw the demo scene whose white blocks it turns into visual sinks")  # fmt: skip
    scene.add_argument("--out", required=True, type=Path)
    return parser


def _add_eval_data(command: argparse.ArgumentParser, what: str, *, required: bool = False) -> None:
    """--data, --images, --suffix and --batch-size of `eval pope` and `eval vqa`."""
    command.add_argument("--data", type=Path, required=required, default=None,
                         help=what + ("" if required else "; default: the synthetic benchmark"))  # fmt: skip
    command.add_argument("--images", type=Path, default=None, help="the folder --data's image paths are relative to")
    command.add_argument("--suffix", default=None,
                         help="with --data: the line appended to each question (default: LLaVA-1.5's "
                              "'Answer the question using a single word or phrase.'; '' for none)")  # fmt: skip
    command.add_argument("--batch-size", type=int, default=1,
                         help="questions per forward pass, left-padded (default: 1; answers do not depend on it)")  # fmt: skip


def _add_vqa(benchmarks: Any) -> None:
    vqa = benchmarks.add_parser("vqa", help="a VQA file of your own: yes/no, multiple-choice and short answers")
    _add_model(vqa)
    _add_eval_data(vqa, "JSON lines: image, question, answer, optional choices (answer = letter) and id", required=True)
    vqa.add_argument("--choice-suffix", default=None,
                     help="the line after a multiple-choice question's options (default: LLaVA-1.5's "
                          "'Answer with the option's letter from the given choices directly.')")  # fmt: skip
    vqa.add_argument("--n", type=int, default=None, help="the first n questions (default: all)")
    _add_stack(vqa, var_default=False)
    vqa.add_argument("--max-new-tokens", type=int, default=10)
    vqa.add_argument("--restart", action="store_true", help="discard a previous run in --out instead of resuming it")
    vqa.add_argument("--out", required=True, type=Path, help="folder for vqa.jsonl (one line per question) and vqa.json")


def _eval_params(args: argparse.Namespace, lm: Any, find: Any) -> dict[str, Any]:
    """The stack's parameters as the run used them: VAR's only when VAR is on (they change nothing otherwise)."""
    params = _params(args, lm, find)
    if not args.var:
        for key in ("rho", "p", "summ"):
            params.pop(key, None)
    return params


def _open_eval_folder(args: argparse.Namespace, kind: str) -> Any:
    """Check --n and --batch-size, and lock --out (a busy folder is refused at once, before the model loads)."""
    from sinklens.eval.folder import RunFolder
    from sinklens.eval.pope import check_batch_size

    check_batch_size(args.batch_size)
    if args.n is not None and args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    if args.data is None and (args.images is not None or args.suffix is not None):
        raise ParameterError("--images and --suffix go with --data (a question file); without --data the "
                             "benchmark is synthetic")  # fmt: skip
    folder = RunFolder(args.out, kind)
    folder.lock()
    if args.restart:
        folder.restart()
    return folder


def eval_vqa(args: argparse.Namespace) -> dict[str, Any]:
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.eval.vqa import evaluate_vqa, load_questions
    from sinklens.models import load

    stack = _stack(args, with_var=args.var)  # check parameters before loading anything
    _check_new_tokens(args)
    _check_dims_sign(args)
    _check_out_folder(args.out)
    questions = load_questions(args.data, args.images, args.n)  # the whole file and every image, checked now
    _check_model(args)
    folder = _open_eval_folder(args, "vqa")
    try:
        lm = load(args.model, attention=args.attention)
        _check_dims_width(args, lm)
        _check_context(lm, 0, args.max_new_tokens)
        return evaluate_vqa(
            lm, NnsightRunner(lm), data=args.data, images=args.images, out=folder, interventions=stack,
            max_new_tokens=args.max_new_tokens, suffix=args.suffix, choice_suffix=args.choice_suffix,
            batch_size=args.batch_size, questions=questions, settings={"params": _eval_params(args, lm, stack[0])},
        )  # fmt: skip
    finally:
        folder.unlock()


def _stack(args: argparse.Namespace, *, with_var: bool) -> list[Any]:
    from sinklens.interventions import VAR, FindSinks

    find = FindSinks(dims=args.sink_dims, tau=args.tau, tau_fraction=args.tau_fraction, convention=args.convention)
    var = VAR(p=args.p, rho=args.rho, summ=args.summ, convention=args.convention)
    return [find, var] if with_var else [find]


def _params(args: argparse.Namespace, lm: Any, find: Any) -> dict[str, Any]:
    return {
        "tau": round(find.threshold(lm.d_model, lm.default_tau), 4),
        "tau_rule": "--tau" if args.tau is not None else "--tau-fraction" if args.tau_fraction is not None
        else "model default" if lm.default_tau is not None else "paper (20)",
        "rho": args.rho, "p": args.p, "summ": args.summ, "convention": args.convention,
    }  # fmt: skip


def _sink_positions(ctx: Any) -> dict[str, dict[str, list[int]]]:
    image = ctx.image.mask[0]
    table = {}
    for layer, sinks in sorted(ctx.sinks.items()):
        found = sinks[0]
        table[str(layer)] = {
            "visual": (found & image).nonzero().flatten().tolist(),
            "text": (found & ~image).nonzero().flatten().tolist(),
        }
    return table


def _image_grids(ctx: Any) -> list[dict[str, Any]]:
    """Per image of the prompt: its span, each tile's (rows, cols) and its image-newline positions."""
    return [
        {
            "span": [image.start, image.stop],
            "tiles": {tile.name: list(tile.positions.shape) for tile in image.tiles},
            "newlines": list(image.newlines),
        }
        for image in ctx.image.images_of(0)
    ]


def _image_centric_counts(ctx: Any) -> dict[str, Any]:
    per_layer: dict[str, int] = {}
    for record in ctx.records.get("var", []):
        per_layer[str(record["layer"])] = per_layer.get(str(record["layer"]), 0) + record["n_image_centric"]
    return {"total": sum(per_layer.values()), "per_layer": per_layer}


LONG_GENERATION = 256  # tokens; above this `run` says the wait will be long


def _sink_counts(table: dict[str, dict[str, list[int]]]) -> dict[str, dict[str, int]]:
    return {layer: {kind: len(found[kind]) for kind in ("visual", "text")} for layer, found in table.items()}


def _layer_ranges(layers: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _sink_summary(counts: dict[str, dict[str, int]], tau: float) -> str:
    parts = []
    for kind in ("visual", "text"):
        layers = [int(layer) for layer, found in counts.items() if found[kind]]
        where = f"in {len(layers)} of {len(counts)} layers ({_layer_ranges(layers)})" if layers else f"in none of {len(counts)} layers"
        parts.append(f"{kind} sinks {where}")
    return f"sinks at tau {tau:g}: " + "; ".join(parts)


def _sink_warnings(counts: dict[str, dict[str, int]], args: argparse.Namespace, tau: float, model: str) -> list[str]:
    """What a first run must not leave unsaid: VAR acting on a model where no image token is a sink."""
    if not args.var or any(found["visual"] for found in counts.values()):
        return []
    if not any(found["text"] for found in counts.values()):
        return [
            f"no token is a sink at tau {tau:g} in any layer, so VAR had nothing to move and answer_var equals "
            "answer_base. Check --sink-dims (`sinklens discover-sink-dims`) or lower --tau."
        ]
    if args.convention == "released":
        return [
            f"no image token is a visual sink at tau {tau:g} in any layer; under the released convention VAR "
            "selects no head in a layer without a visual sink, so it changed nothing. Lower --tau to study "
            "the sinks this model has."
        ]
    return [
        f"no image token is a visual sink at tau {tau:g} in any layer, yet VAR acted: under the paper "
        "convention its budget is the attention on the text sinks (BOS and the like), which it moves onto "
        "the image tokens, so answer_var differs from answer_base for that reason. Lower --tau to study the "
        f"visual sinks this model has{' (a few image tokens pass --tau 16, in layers 23-24)' if model == 'toy-llava' else ''}, "
        "or pass --convention released (no head is selected in a layer without a visual sink)."
    ]


def run(args: argparse.Namespace) -> Path:
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.models import load
    from sinklens.models.images import open_image, to_rgb

    started = time.perf_counter()
    _check_out_folder(args.out)
    _check_new_tokens(args)
    _check_dims_sign(args)
    find, var = _stack(args, with_var=True)
    converted = [to_rgb(open_image(path, what="--image")) for path in args.image]  # corrupt, missing, a folder
    _check_remote_attention(args.remote, args.attention)
    if args.remote == "ndif":
        from sinklens.backends.remote import connect

        runner = connect(args.model)  # fails fast, naming what is missing: the API key, or the hosted models
        lm = runner.loaded
    else:
        _check_model(args)
        lm = load(args.model, attention=args.attention)
        runner = NnsightRunner(lm, remote="local" if args.remote == "local" else False)
    _check_dims_width(args, lm)
    inputs = lm.prepare([image.image for image in converted], args.prompt)
    _check_context(lm, int(inputs["input_ids"].shape[1]), args.max_new_tokens)
    if args.max_new_tokens > LONG_GENERATION:  # every step runs (EOS is suppressed): say so before a long wait
        print(f"sinklens: note: generating {args.max_new_tokens} tokens {'twice ' if args.var else ''}(every step "
              "runs; answers are cut at the end-of-sequence token afterwards): this takes a while", file=sys.stderr)
    base = runner.generate(inputs, [find], max_new_tokens=args.max_new_tokens)
    edited = runner.generate(inputs, [find, var], max_new_tokens=args.max_new_tokens) if args.var else None
    params = _params(args, lm, find)
    sinks = _sink_positions(base.ctx)
    counts = _sink_counts(sinks)
    result = {
        "model": lm.name,
        "remote": args.remote,
        "attention": lm.attention,
        "prompt": args.prompt,
        "image": [str(path) for path in args.image],
        "image_notes": [image.note for image in converted],
        "sink_dims": list(args.sink_dims or lm.sink_dims or ()),
        "sink_dims_source": "--sink-dims" if args.sink_dims else lm.sink_dims_source,
        "params": params,
        "n_image_tokens": int(base.ctx.image.mask.sum()),
        "image_grids": _image_grids(base.ctx),
        "sinks": sinks,
        "sink_counts": counts,
        "sink_summary": _sink_summary(counts, params["tau"]),
        "warnings": _sink_warnings(counts, args, params["tau"], lm.name),
        "n_image_centric": _image_centric_counts(edited.ctx) if edited else None,
        "answer_base": base.texts[0],
        "answer_var": edited.texts[0] if edited else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "result.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def eval_pope(args: argparse.Namespace) -> dict[str, Any]:
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.eval import pope
    from sinklens.models import load

    stack = _stack(args, with_var=args.var)  # check parameters before loading anything
    if args.vcd:
        from sinklens.interventions import VCD

        stack.append(VCD(alpha=args.vcd_alpha, beta=args.vcd_beta))
    _check_new_tokens(args)
    _check_dims_sign(args)
    _check_out_folder(args.out)
    items = None
    if args.data is not None:  # the whole file and every image, checked before anything is locked or loaded
        items = pope.file_items(args.data, args.images, args.n, suffix=args.suffix)
    _check_model(args)
    folder = _open_eval_folder(args, "pope")
    try:
        lm = load(args.model, attention=args.attention)
        _check_dims_width(args, lm)
        _check_context(lm, 0, args.max_new_tokens)
        return pope.evaluate_pope(
            lm, NnsightRunner(lm), split=args.split, n=args.n or 300, out=folder, interventions=stack,
            max_new_tokens=args.max_new_tokens, settings={"params": _eval_params(args, lm, stack[0])},
            data=args.data, images=args.images, suffix=args.suffix, batch_size=args.batch_size, items=items,
        )  # fmt: skip
    finally:
        folder.unlock()


def eval_captions(args: argparse.Namespace) -> dict[str, Any]:
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.eval.captions import evaluate_captions
    from sinklens.models import load

    stack = _stack(args, with_var=args.var)
    if args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    from sinklens.eval.pope import check_batch_size

    check_batch_size(args.batch_size)
    _check_new_tokens(args)
    _check_dims_sign(args)
    _check_out_folder(args.out)
    _check_model(args)
    lm = load(args.model, attention=args.attention)
    _check_dims_width(args, lm)
    _check_context(lm, 0, args.max_new_tokens)
    result = evaluate_captions(lm, NnsightRunner(lm), n=args.n, interventions=stack, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size)  # fmt: skip
    result["params"] = _params(args, lm, stack[0])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "captions.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def discover_sink_dims(args: argparse.Namespace) -> dict[str, Any]:
    from sinklens.backends.nnsight_backend import NnsightRunner
    from sinklens.eval.discovery import discover, plot_discovery
    from sinklens.models import load

    if args.prompts < 1:
        raise ParameterError(f"--prompts must be >= 1 (the number of scene prompts to scan), got {args.prompts}")
    if args.first_layer < 0:
        raise ParameterError(f"--first-layer must be >= 0, got {args.first_layer}")
    if args.threshold is not None and not args.threshold > 0:
        raise ParameterError(f"--threshold must be > 0 (every dimension would pass {args.threshold:g}); SPEC's is 20")
    if args.threshold_fraction is not None and not 0 < args.threshold_fraction < 1:
        raise ParameterError(
            f"--threshold-fraction must be in (0, 1): it is a fraction of sqrt(d_model), which |x_d| / RMS(x) never "
            f"exceeds; got {args.threshold_fraction:g} (0.3125 gives the paper's 20 at width 4096)"
        )
    _check_out_folder(args.out)
    _check_model(args)
    lm = load(args.model, attention=args.attention)  # discover checks --first-layer and --threshold against the model before its scan
    result = discover(
        lm, NnsightRunner(lm), n_prompts=args.prompts, threshold=args.threshold,
        threshold_fraction=args.threshold_fraction, first_layer=args.first_layer,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sink_dims.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_discovery(result, args.out / "sink_dims.png")
    return result


def _add_explore(commands: Any) -> None:
    explore = commands.add_parser(
        "explore", help="write an interactive attention explorer (one self-contained HTML file) for an image and prompt"
    )
    _add_model(explore)
    explore.add_argument("--image", required=True, type=Path, action="append",
                         help="the image; repeat for several images in one prompt (shown in order)")  # fmt: skip
    explore.add_argument("--prompt", required=True, help="the question about the image")
    _add_stack(explore, var_default=True)
    explore.add_argument("--max-new-tokens", type=int, default=16)
    explore.add_argument("--heads", choices=("auto", "all", "mean"), default="auto",
                         help="keep every head's attention, the layer mean only, or every head when it fits "
                         "in --max-mb (default: auto)")  # fmt: skip
    explore.add_argument("--max-mb", type=float, default=16.0, help="size budget of --heads auto (default: 16)")
    explore.add_argument("--out", required=True, type=Path, help="folder for index.html")


def explore(args: argparse.Namespace) -> tuple[Path, dict[str, int]]:
    from sinklens.explorer import explore as build

    from sinklens.models import load
    from sinklens.models.images import open_image, to_rgb

    find, var = _stack(args, with_var=True)  # check parameters before loading anything
    _check_new_tokens(args)
    _check_dims_sign(args)
    if not args.max_mb > 0:
        raise ParameterError(f"--max-mb must be > 0, got {args.max_mb}")
    images = [to_rgb(open_image(path, what="--image")).image for path in args.image]  # corrupt, missing, a folder
    _check_out_folder(args.out)
    _check_model(args)
    lm = load(args.model, attention=args.attention)
    _check_dims_width(args, lm)
    page = build(lm, images, args.prompt, find=find, var=var if args.var else None,
                 max_new_tokens=args.max_new_tokens, heads=args.heads, max_mb=args.max_mb)  # fmt: skip
    return page.save(args.out), page.sizes


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            path = run(args)
            result = json.loads(path.read_text())
            print(f"answer without VAR: {result['answer_base']!r}")
            if result["answer_var"] is not None:
                print(f"answer with VAR:    {result['answer_var']!r}")
            for image, note in zip(result["image"], result["image_notes"]):
                if note:
                    print(f"sinklens: note: --image {image}: {note}", file=sys.stderr)
            print(result["sink_summary"])
            for warning in result["warnings"]:
                print(f"sinklens: warning: {warning}", file=sys.stderr)
            print(f"result written to {path}")
        elif args.command == "eval" and args.benchmark == "captions":
            result = eval_captions(args)
            print(json.dumps({k: round(v, 3) for k, v in result["accuracy"].items()}))
            print(f"captions and scores written to {args.out / 'captions.json'}")
        elif args.command == "eval" and args.benchmark == "vqa":
            result = eval_vqa(args)
            print(json.dumps({"accuracy": round(result["accuracy"], 4), "n": result["n"],
                              **{k: round(v["accuracy"], 4) for k, v in result["per_type"].items()}}))  # fmt: skip
            print(f"metrics written to {args.out / 'vqa.json'}")
        elif args.command == "eval":
            result = eval_pope(args)
            print(json.dumps({k: result[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")}))
            print(f"metrics written to {args.out / 'pope.json'}")
        elif args.command == "discover-sink-dims":
            result = discover_sink_dims(args)
            print(f"sink dimensions of {result['model']}: {result['sink_dims']} (threshold {result['threshold']})")
            print(f"evidence written to {args.out / 'sink_dims.json'}")
        elif args.command == "explore":
            path, sizes = explore(args)
            print(f"explorer written to {path} ({sizes['html'] / 1e6:.2f} MB: attention data "
                  f"{sizes['attention_bytes'] / 1e6:.2f} MB, inlined JSON {sizes['json_bytes'] / 1e6:.2f} MB)")  # fmt: skip
        elif args.command == "draw-scene":
            draw_scene(args)
    except (SinklensError, FileNotFoundError) as e:  # every refusal: one line that names the fix, no traceback
        print(f"sinklens: error: {e}", file=sys.stderr)
        return 2
    return 0


def draw_scene(args: argparse.Namespace) -> None:
    from sinklens.builtin import BUILTINS

    _check_out_image(args.out)
    if args.index < 0:
        raise ParameterError(f"--index must be >= 0 (scenes are numbered from 0), got {args.index}")
    if args.model is not None and args.model not in BUILTINS:
        from sinklens.models.load import builtins_hint

        raise UnknownModelError(
            f"draw-scene --model takes a built-in (it draws that built-in's demo scene), got {args.model!r}. "
            f"{builtins_hint(args.model)}."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        from sinklens.builtin import demo_scene

        demo_scene(args.model).save(args.out)
    else:
        from sinklens.data.scenes import scene

        drawn = scene(args.split, args.index)
        drawn.image().save(args.out)
        print(drawn.caption())
    print(f"scene written to {args.out}")
