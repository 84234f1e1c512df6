"""The settings of a study run: every argument of `studies/*.py` parsed and checked before a model loads.

`parse_args` returns a frozen `StudySettings`. Its `model` is the
`ModelSettings` the command line uses too (`sinklens.eval.settings`), which
opens the runner; the files a run reads (`--images`, `--data`) are opened and
checked here, so a bad one fails before anything loads. A study's own options
(added by `extra`) are in `settings.own`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sinklens.errors import ParameterError
from sinklens.eval.loop import Benchmark, check_batch_size
from sinklens.eval.settings import ModelSettings, add_model_arguments

SCENE_QUESTION = "Is there a {object} in the image? Answer yes or no."
IMAGES_QUESTION = "Describe the image."
REMOTE_HELP = ("off: run here; local: nnsight's local simulation of a remote request; "
               "ndif: run on NDIF's deployment of --model (a hub id; needs an API key)")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class StudySettings:
    """What one study run was asked for, every argument checked (input files opened) before a model loads."""

    name: str
    out: Path
    model: ModelSettings
    n: int
    smoke: bool
    seed: int
    tau: float | None  # None: the model's default
    tau_rule: str
    question: str
    batch_size: int
    images: Path | None = None
    image_files: tuple[Path, ...] | None = None  # --images' first n files
    data: Path | None = None  # a POPE file (scored studies)
    suffix: str | None = None
    runs: Path | None = None
    questions: Benchmark | None = None  # --data's questions, read and checked whole
    share_prefixes: bool = True  # POPE runs compute each distinct image prefix once (the answers are the same)
    own: argparse.Namespace = field(default_factory=argparse.Namespace)  # the study's own options (`extra`)


def _tau(text: str) -> float | str:
    if text == "visual":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tau takes a number or 'visual', got {text!r}") from None


def _parser(name: str, description: str, *, n: int, smoke_n: int, scored: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"studies/{name}.py", description=description)
    add_model_arguments(parser, remote_help=REMOTE_HELP)
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {name}.png and {name}.json")
    parser.add_argument("--n", type=int, default=None, help=f"prompts / POPE examples per setting (default {n}; {smoke_n} with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run for CI: few prompts, few settings")
    parser.add_argument("--seed", type=int, default=0, help="seed of random draws (random ablation, random tokens)")
    parser.add_argument("--tau", type=_tau, default=None,
                        help="sink threshold on phi (default: the model's registered one, else the paper's 20); "
                             "'visual': the model's registered visual-sink threshold (sinklens.models.sink_dims)")  # fmt: skip
    parser.add_argument("--images", type=Path, default=None,
                        help="a folder of your images: the study's prompts use its first n (sorted by name) "
                             "instead of synthetic scenes" + ("; with --data, the folder the file's images are in" if scored else ""))  # fmt: skip
    parser.add_argument("--question", default=None,
                        help=f"question template (default {SCENE_QUESTION!r} on scenes, {IMAGES_QUESTION!r} with "
                             "--images; {object} = a scene's first object)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1,
                        help="POPE questions per generate call (default 1; the answers do not depend on it)"
                             if scored else "prompts per forward pass (default 1; the numbers do not depend on it)")  # fmt: skip
    parser.add_argument("--shared-prefix", action=argparse.BooleanOptionalAction, default=True,
                        help="POPE runs compute each distinct image prefix once and continue every question from its "
                             "cache (default on; the answers are the same either way)")  # fmt: skip
    if scored:
        parser.add_argument("--data", type=Path, default=None,
                            help="a POPE question file as published (JSON lines: question_id, image, text, label); "
                                 "needs --images. Default: the synthetic POPE")  # fmt: skip
        parser.add_argument("--suffix", default=None,
                            help="with --data: the line appended to each question (default: LLaVA-1.5's "
                                 "'Answer the question using a single word or phrase.'; '' for none)")  # fmt: skip
        parser.add_argument("--runs", type=Path, default=None,
                            help="folder of the per-setting POPE rows (default OUT/pope_runs); share it between studies "
                                 "to reuse identical settings")  # fmt: skip
    return parser


_COMMON = ("model", "attention", "remote", "out", "n", "smoke", "seed", "tau", "images", "question", "batch_size",
           "data", "suffix", "runs", "shared_prefix")  # fmt: skip


def parse_args(name: str, description: str, *, n: int, smoke_n: int, argv: Sequence[str] | None = None,
               scored: bool = False, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> StudySettings:  # fmt: skip
    """The checked settings of a study run: `--model`, `--attention`, `--remote`, `--out`, `--n` (default `n`;
    `smoke_n` under `--smoke`), `--smoke`, `--seed`, `--tau`, `--images`, `--question`, `--batch-size`; with
    `scored` (POPE-scored studies) also `--data`, `--suffix`, `--runs`. `extra(parser)` adds a study's own
    options, which land in `settings.own`."""
    parser = _parser(name, description, n=n, smoke_n=smoke_n, scored=scored)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    model = ModelSettings.from_args(args)
    count = args.n if args.n is not None else smoke_n if args.smoke else n
    if count < 1:
        raise ParameterError(f"--n must be >= 1, got {count}")
    tau, tau_rule = _threshold(args.tau, args.model)
    question, image_files, questions = _sources(args, count)
    own = argparse.Namespace(**{key: value for key, value in vars(args).items() if key not in _COMMON})
    return StudySettings(
        name=name, out=args.out, model=model, n=count, smoke=args.smoke, seed=args.seed, tau=tau, tau_rule=tau_rule,
        question=question, batch_size=args.batch_size, images=args.images, image_files=image_files,
        data=getattr(args, "data", None), suffix=getattr(args, "suffix", None), runs=getattr(args, "runs", None),
        questions=questions, share_prefixes=args.shared_prefix, own=own,
    )  # fmt: skip


def _threshold(tau: float | str | None, model: str) -> tuple[float | None, str]:
    """(tau, the rule that chose it): a number, the model's registered visual-sink threshold, or the default."""
    if tau == "visual":
        from sinklens.models.sink_dims import known_sink_dims

        entry = known_sink_dims(model)
        if entry is None or entry.visual_tau is None:
            raise ParameterError(f"--tau visual: {model} has no registered visual-sink threshold; give a number")
        return entry.visual_tau, f"visual ({entry.visual_tau_reason})"
    if tau is not None and not tau > 0:
        raise ParameterError(f"--tau must be > 0, got {tau}")
    return tau, "--tau" if tau is not None else "model default"


def _sources(args: argparse.Namespace, n: int) -> tuple[str, tuple[Path, ...] | None, Benchmark | None]:
    """Check --images, --data and --question before any model loads (every image is opened once)."""
    from sinklens.data.files import image_files

    data = getattr(args, "data", None)
    check_batch_size(args.batch_size)
    question = args.question
    if question is None:
        question = IMAGES_QUESTION if args.images is not None else SCENE_QUESTION
    elif not question.strip():
        raise ParameterError("--question is empty; give the question to ask about each image")
    try:
        question.format(object="circle")
    except (KeyError, IndexError, ValueError) as e:
        raise ParameterError(f"--question {question!r} is not a template with only {{object}} in braces ({e})") from None
    if args.images is not None and "{object}" in question:
        raise ParameterError("--question uses {object}, which only synthetic scenes know; with --images ask a plain question")
    files = tuple(image_files(args.images, n)) if args.images is not None else None
    if files is not None and data is None and len(files) < n:
        raise ParameterError(f"--n {n} but --images {args.images} holds {len(files)} images; "
                             f"use --n {len(files)} or add images")  # fmt: skip
    questions = None
    if data is not None:
        from sinklens.eval import pope

        if args.images is None:
            raise ParameterError("--data needs --images DIR, the folder its images are in")
        questions = pope.from_file(data, args.images, n, suffix=args.suffix)  # the whole file, checked now
        if len(questions.items) < n:
            raise ParameterError(f"--n {n} but {data} has {len(questions.items)} questions; use --n {len(questions.items)} or less")
    return question, files, questions
