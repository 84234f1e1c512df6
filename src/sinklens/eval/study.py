"""What the study scripts in `studies/` share: arguments, the model, prompts, POPE runs, figures, JSON.

Each study is `python studies/NAME.py --model MODEL --out DIR [--n N] [--smoke] [--remote local|ndif]`
and writes `DIR/NAME.png` and `DIR/NAME.json` (the numbers the figure draws,
with the model, the layers and n). `--smoke` runs a tiny version for CI.

Prompts are held-out synthetic scenes unless `--images DIR` gives a folder of the
user's images (the first n, sorted by name); `--question` is the question
template (`{object}` names a scene's first object, synthetic scenes only).
Every study takes `--batch-size N` (default 1): N prompts per forward pass
(`Study.batches`), or N POPE questions per generate call, padded on the left
with each example's own image spans, so the numbers do not depend on N (up to
float rounding; a random ablation draws each prompt's keys as alone).
POPE-scored studies also take `--data FILE --images DIR` (a POPE file as its
authors publish it) and `--runs DIR`: each setting's rows go to
a folder of their own under DIR named by the setting's hash, so a study resumes,
and studies sharing DIR share identical settings (the baseline) instead of
recomputing them. Two settings on the same examples are compared with a paired
bootstrap CI and McNemar's exact test (`sinklens.eval.stats`).

    args = parse_args("fig1_attention_maps", "Text-to-image attention drawn over the image.", n=4, smoke_n=2)
    study = Study.start(args)                  # loads the model (toy-llava by default), makes the runner
    for examples, inputs in study.batches():   # --batch-size prompts at a time
        ctx = study.runner.forward(inputs, [study.find_sinks()]).ctx
        for e in examples:                     # e.index, e.source, e.question; e.row: its row of the batch
            phi = e.own(ctx.phi[10])           # its own positions of a [batch, pos, ...] tensor, as if alone
    study.finish(figure, {"layers": ...})      # writes NAME.png and NAME.json, closes the figure
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sinklens.data.pope import pope as pope_questions
from sinklens.data.questions import presence
from sinklens.data.scenes import scene
from sinklens.errors import ParameterError
from sinklens.run import Runner

DEFAULT_MODEL = "toy-llava"
REMOTE_MODES = ("off", "local", "ndif")
ATTENTION_CHOICES = ("eager", "rows")  # sinklens.models.loaded.ATTENTION_ROUTES
# the paper's map layers (10-12 of LLaVA-1.5-7B's 32), at the same depth of other models
PAPER_MAP_LAYERS = (10, 12)
PAPER_LAYERS = 32


def _tau(text: str) -> float | str:
    if text == "visual":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tau takes a number or 'visual', got {text!r}") from None


SCENE_QUESTION = "Is there a {object} in the image? Answer yes or no."
IMAGES_QUESTION = "Describe the image."


def parse_args(name: str, description: str, *, n: int, smoke_n: int, argv: Sequence[str] | None = None,
               scored: bool = False, extra: Any = None) -> argparse.Namespace:  # fmt: skip
    """`--model`, `--out`, `--n` (default `n`; `smoke_n` under `--smoke`), `--smoke`, `--seed`, `--tau`, `--remote`,
    `--images`, `--question`, `--batch-size`; with `scored` (POPE-scored studies) also `--data`, `--suffix`, `--runs`.
    `extra(parser)` adds a study's own options."""
    parser = argparse.ArgumentParser(prog=f"studies/{name}.py", description=description)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a built-in or a checkpoint (default {DEFAULT_MODEL})")
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {name}.png and {name}.json")
    parser.add_argument("--n", type=int, default=None, help=f"prompts / POPE examples per setting (default {n}; {smoke_n} with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a tiny run for CI: few prompts, few settings")
    parser.add_argument("--seed", type=int, default=0, help="seed of random draws (random ablation, random tokens)")
    parser.add_argument("--tau", type=_tau, default=None,
                        help="sink threshold on phi (default: the model's registered one, else the paper's 20); "
                             "'visual': the model's registered visual-sink threshold (sinklens.models.sink_dims)")
    parser.add_argument("--remote", choices=REMOTE_MODES, default="off",
                        help="off: run here; local: nnsight's local simulation of a remote request; "
                             "ndif: run on NDIF's deployment of --model (a hub id; needs an API key)")  # fmt: skip
    parser.add_argument("--images", type=Path, default=None,
                        help="a folder of your images: the study's prompts use its first n (sorted by name) "
                             "instead of synthetic scenes" + ("; with --data, the folder the file's images are in" if scored else ""))  # fmt: skip
    parser.add_argument("--question", default=None,
                        help=f"question template (default {SCENE_QUESTION!r} on scenes, {IMAGES_QUESTION!r} with "
                             "--images; {object} = a scene's first object)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1,
                        help="POPE questions per generate call (default 1; the answers do not depend on it)"
                             if scored else "prompts per forward pass (default 1; the numbers do not depend on it)")  # fmt: skip
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
    if extra is not None:
        extra(parser)
    parser.add_argument("--attention", choices=ATTENTION_CHOICES, default="eager",
                        help="eager (default): every layer's full pattern; rows: sdpa, with explicit attention "
                             "only for the rows the study's stack acts on")  # fmt: skip
    args = parser.parse_args(argv)
    if args.remote == "ndif" and args.attention == "rows":
        raise ParameterError(
            "--attention rows needs sinklens' attention function next to the model, and NDIF runs its own "
            "(eager): use --attention eager with --remote ndif, or --remote off/local with --attention rows"
        )
    if args.n is None:
        args.n = smoke_n if args.smoke else n
    if args.n < 1:
        raise ParameterError(f"--n must be >= 1, got {args.n}")
    if args.tau == "visual":
        from sinklens.models.sink_dims import known_sink_dims

        entry = known_sink_dims(args.model)
        if entry is None or entry.visual_tau is None:
            raise ParameterError(f"--tau visual: {args.model} has no registered visual-sink threshold; give a number")
        args.tau, args.tau_rule = entry.visual_tau, f"visual ({entry.visual_tau_reason})"
    elif args.tau is not None and not args.tau > 0:
        raise ParameterError(f"--tau must be > 0, got {args.tau}")
    args.name = name
    check_sources(args, scored)
    return args


def check_sources(args: argparse.Namespace, scored: bool) -> None:
    """Check --images, --data and --question before any model loads (every image is opened once)."""
    from sinklens.data.files import image_files
    from sinklens.eval.pope import check_batch_size, file_items

    data = getattr(args, "data", None)
    check_batch_size(args.batch_size)
    if args.question is None:
        args.question = IMAGES_QUESTION if args.images is not None else SCENE_QUESTION
    elif not args.question.strip():
        raise ParameterError("--question is empty; give the question to ask about each image")
    try:
        args.question.format(object="circle")
    except (KeyError, IndexError, ValueError) as e:
        raise ParameterError(f"--question {args.question!r} is not a template with only {{object}} in braces ({e})") from None
    if args.images is not None and "{object}" in args.question:
        raise ParameterError("--question uses {object}, which only synthetic scenes know; with --images ask a plain question")
    args.image_files = image_files(args.images, args.n) if args.images is not None else None
    if args.image_files is not None and data is None and len(args.image_files) < args.n:
        raise ParameterError(f"--n {args.n} but --images {args.images} holds {len(args.image_files)} images; "
                             f"use --n {len(args.image_files)} or add images")  # fmt: skip
    args.items = None
    if data is not None:
        if args.images is None:
            raise ParameterError("--data needs --images DIR, the folder its images are in")
        args.items = file_items(data, args.images, args.n, suffix=args.suffix)  # the whole file, checked now
        if len(args.items) < args.n:
            raise ParameterError(f"--n {args.n} but {data} has {len(args.items)} questions; use --n {len(args.items)} or less")


@dataclass(frozen=True)
class UserImage:
    """An image of the user's (from --images): it draws itself like a scene, but knows no objects."""

    path: Path
    objects: tuple = ()
    background: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def image(self) -> Any:
        from sinklens.data.files import open_image

        return open_image(self.path, where=f"--images {self.path.parent}")


def map_layers(n_layers: int) -> tuple[int, ...]:
    """The paper's layers 10-12 (of 32) at the same relative depth: 9-11 of 30 layers."""
    low = round(PAPER_MAP_LAYERS[0] / PAPER_LAYERS * n_layers)
    high = round(PAPER_MAP_LAYERS[1] / PAPER_LAYERS * n_layers)
    return tuple(range(max(low, 0), min(high, n_layers - 1) + 1))


@dataclass(frozen=True)
class Example:
    """One prompt of a batch from `Study.batches`: which prompt it is and where it sits in the batch."""

    index: int  # among the study's prompts
    source: Any  # a held-out Scene, or a UserImage under --images
    question: str
    row: int  # its row of the batch
    length: int  # its own tokens: the last `length` positions of its row (batches are padded on the left)

    def own(self, tensor: torch.Tensor) -> torch.Tensor:
        """Its part of a `[batch, pos, ...]` tensor: its row, its own positions, as if it had run alone."""
        return tensor[self.row, tensor.shape[1] - self.length :]


def scene_prompt(index: int) -> tuple[Any, str]:
    """Held-out scene `index` and a question about its first object ("Is there a circle in the image?")."""
    s = scene("heldout", index)
    return s, presence(s.objects[0].shape, True).question


@dataclass
class Study:
    """One run of a study: its arguments, the loaded model and runner, the start time."""

    args: argparse.Namespace
    loaded: Any
    runner: Runner
    started: float = field(default_factory=time.time)
    _correct: dict[tuple[str, str], list[bool]] = field(default_factory=dict)

    @classmethod
    def start(cls, args: argparse.Namespace) -> Study:
        import sinklens

        args.out.mkdir(parents=True, exist_ok=True)
        remote = getattr(args, "remote", "off")
        if remote == "ndif":
            from sinklens.backends.remote import connect

            runner = connect(args.model)  # fails fast, naming what is missing: the API key, or the hosted models
            return cls(args=args, loaded=runner.loaded, runner=runner)
        loaded = sinklens.load(args.model, attention=getattr(args, "attention", "eager"))
        return cls(args=args, loaded=loaded, runner=sinklens.NnsightRunner(loaded, remote="local" if remote == "local" else False))

    def find_sinks(self, **kwargs: Any) -> Any:
        """FindSinks with the run's `--tau` (the model's default when not given)."""
        import sinklens

        return sinklens.FindSinks(tau=self.args.tau, **kwargs)

    @property
    def tau(self) -> float:
        """The absolute sink threshold of this run."""
        return self.find_sinks().threshold(self.loaded.d_model, self.loaded.default_tau)

    @property
    def name(self) -> str:
        return self.args.name

    def source(self, index: int) -> tuple[Any, str]:
        """(source, question) of prompt `index`: a held-out scene, or the index-th image of --images."""
        files = getattr(self.args, "image_files", None)
        template = getattr(self.args, "question", None) or SCENE_QUESTION
        if files is not None:
            return UserImage(files[index]), template
        source = scene("heldout", index)
        return source, template.format(object=source.objects[0].shape)

    def prompt(self, index: int) -> tuple[Any, str, Any]:
        """(source, question, inputs) of prompt `index` alone."""
        source, question = self.source(index)
        return source, question, self.loaded.prepare(source.image(), question)

    def batches(self, n: int | None = None, desc: str | None = None) -> Iterator[tuple[list[Example], Any]]:
        """The first `n` prompts (default --n), --batch-size at a time, with a progress bar over prompts.

        Yields (examples, inputs): `inputs` from `LoadedModel.prepare_batch`, padded on the left,
        each example with its own image spans (`ctx.image.images_of(e.row)`); read an example's
        part of a per-position record with `e.own(tensor)` and of a per-prompt one at `e.row`.
        The source is a held-out `Scene`, or a `UserImage` under --images (its `objects` are empty).
        """
        from tqdm.auto import tqdm

        total = n or self.args.n
        size = getattr(self.args, "batch_size", 1)
        with tqdm(total=total, desc=desc or self.name) as bar:
            for start in range(0, total, size):
                chosen = [(index, *self.source(index)) for index in range(start, min(start + size, total))]
                inputs = self.loaded.prepare_batch([(source.image(), question) for _, source, question in chosen])
                mask = inputs.get("attention_mask")
                lengths = mask.sum(-1).tolist() if mask is not None else [inputs["input_ids"].shape[1]] * len(chosen)
                yield [Example(index, source, question, row, int(length))
                       for row, ((index, source, question), length) in enumerate(zip(chosen, lengths))], inputs  # fmt: skip
                bar.update(len(chosen))

    def source_name(self, source: Any, index: int) -> str:
        """"scene 3" or the image's file name, for titles."""
        return source.name if isinstance(source, UserImage) else f"scene {index}"

    def title(self, what: str, layers: str | None = None) -> str:
        """`MODEL: what, layers ...`, for figure titles (`layers` is the whole phrase: "layers 9-11")."""
        where = f", {layers}" if layers else ""
        images = getattr(self.args, "images", None)
        data = getattr(self.args, "data", None)
        shown = f" [{data.name}]" if data is not None else f" [{images.name or images}/]" if images is not None else ""
        return f"{self.loaded.name}{shown} (tau = {self.tau:g}): {what}{where}"

    @property
    def questions(self) -> str:
        """What the POPE-scored settings are asked: the synthetic split's name, or the --data file's."""
        data = getattr(self.args, "data", None)
        return Path(data).name if data is not None else ""

    def pope(self, label: str, split: str, n: int, interventions: Sequence[Any] = ()) -> dict[str, Any]:
        """POPE metrics of one setting, through the resumable `evaluate_pope`.

        The rows go to RUNS/SPLIT/LABEL-HASH (RUNS: --runs, default OUT/pope_runs; HASH: the
        setting's model, questions, stack and decoding), so an identical setting is computed once.
        With --data the questions are the file's first n, whatever `split` says.
        """
        from sinklens.eval.pope import evaluate_pope, describe_stack

        data = getattr(self.args, "data", None)
        items = getattr(self.args, "items", None)
        where = f"file-{Path(data).stem}" if data is not None else split
        key = json.dumps({"model": self.loaded.name, "questions": str(Path(data).resolve()) if data else split,
                          "suffix": getattr(self.args, "suffix", None), "stack": describe_stack(interventions)})  # fmt: skip
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        runs = getattr(self.args, "runs", None) or self.args.out / "pope_runs"
        out = runs / where / f"{label}-{digest}"
        from sinklens.eval.folder import RunFolder

        with RunFolder(out, "pope", wait=True) as folder:  # another study on the same runs folder: wait for its rows
            result = evaluate_pope(
                self.loaded, self.runner, split=split, n=n, out=folder, interventions=list(interventions), data=data,
                images=self.args.images if data is not None else None, suffix=getattr(self.args, "suffix", None),
                batch_size=getattr(self.args, "batch_size", 1), items=items[:n] if items is not None else None,
            )  # fmt: skip
        keep = ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")
        from sinklens.eval.pope import correct

        ids = [e.id for e in pope_questions(split, n)] if data is None else [item.id for item in items[:n]]
        self._correct[(label, where)] = [correct(out, ids)[i] for i in ids]
        return {"setting": label, "split": where, "rows": str(out.relative_to(runs)), **{k: result[k] for k in keep}}

    def compare(self, a: str, b: str, split: str) -> dict[str, Any]:
        """Setting `b` against setting `a` (labels given to `pope`) on the same examples: paired CI and McNemar p."""
        from sinklens.eval.stats import paired

        where = f"file-{Path(self.args.data).stem}" if getattr(self.args, "data", None) is not None else split
        return {"a": a, "b": b, "split": where,
                **paired(self._correct[(a, where)], self._correct[(b, where)], seed=self.args.seed)}  # fmt: skip

    def prompt_source(self) -> dict[str, Any]:
        """Where the prompts came from, for the JSON: scenes or --images, --data, the question template, the chat template."""
        from sinklens.eval.pope import prompt_template

        images = getattr(self.args, "images", None)
        data = getattr(self.args, "data", None)
        return {
            "images": str(images) if images is not None else "synthetic held-out scenes",
            "question": getattr(self.args, "question", None),
            "data": str(data) if data is not None else None,
            "prompt_template": prompt_template(self.loaded),
        }

    def finish(self, figure: Any, data: dict[str, Any]) -> dict[str, Any]:
        """Write NAME.png and NAME.json (with the model, n, smoke, the batch size and the wall time); close the figure."""
        import matplotlib.pyplot as plt

        png = self.args.out / f"{self.name}.png"
        figure.savefig(png, dpi=120, bbox_inches="tight")
        plt.close(figure)
        record = {
            "study": self.name,
            "model": self.loaded.name,
            "n": self.args.n,
            "smoke": self.args.smoke,
            "seed": self.args.seed,
            "n_layers": self.loaded.n_layers,
            "sink_dims": list(self.loaded.sink_dims or ()),
            "tau": self.tau,
            "tau_rule": getattr(self.args, "tau_rule", "--tau" if self.args.tau is not None else "model default"),
            "remote": getattr(self.args, "remote", "off"),
            "batch_size": getattr(self.args, "batch_size", 1),
            "prompts": self.prompt_source(),
            "attention": self.loaded.attention,
            **data,
            "seconds": round(time.time() - self.started, 1),
        }
        path = self.args.out / f"{self.name}.json"
        path.write_text(json.dumps(_plain(record), indent=1) + "\n")
        print(f"wrote {png} and {path}")
        return record


def short(question: str) -> str:
    """A question without POPE's answer instruction, for panel titles."""
    return question.split(" Answer")[0]


def figure(*args: Any, **kwargs: Any) -> Any:
    """`plt.subplots` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def mean_and_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (n - 1) and count of a list of numbers."""
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def overlay(ax: Any, image: Any, grid: torch.Tensor, *, sinks: torch.Tensor | None = None, title: str = "") -> Any:
    """Draw a `[row, col]` attention grid over the image (bilinear), with sink cells marked by white crosses."""
    import numpy as np

    width, height = image.size
    rows, cols = grid.shape
    ax.imshow(image)
    shown = ax.imshow(grid.float().numpy(), cmap="jet", alpha=0.5, extent=(0, width, height, 0), interpolation="bilinear")
    if sinks is not None and sinks.any():
        r, c = np.nonzero(sinks.numpy())
        ax.scatter((c + 0.5) * width / cols, (r + 0.5) * height / rows, marker="x", s=18, c="white", linewidths=1.0)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _plain(value: Any) -> Any:
    """JSON-ready: tensors to lists, floats rounded to 6 significant digits, NaN to None."""
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.6g}")
    if isinstance(value, Path):
        return str(value)
    return value
