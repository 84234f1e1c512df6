"""What the study scripts in `studies/` share: their settings, the model, prompts in batches, POPE runs, the JSON.

Each study is `python studies/NAME.py --model MODEL --out DIR [--n N] [--smoke] [--remote local|ndif]`
and writes `DIR/NAME.png` and `DIR/NAME.json` (the numbers the figure draws,
with the model, the layers and n). `--smoke` runs a tiny version for CI.
`sinklens.eval.study_settings.parse_args` checks every argument (and every
input file) before a model loads and returns a frozen `StudySettings`, which
`Study.start` opens.

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

    settings = parse_args("fig1_attention_maps", "Text-to-image attention drawn over the image.", n=4, smoke_n=2)
    study = Study.start(settings)              # loads the model (toy-llava by default), makes the runner
    for examples, inputs in study.batches():   # --batch-size prompts at a time
        ctx = study.runner.forward(inputs, [study.find_sinks()]).ctx
        for e in examples:                     # e.index, e.source, e.question; e.row: its row of the batch
            phi = e.own(ctx.phi[10])           # its own positions of a [batch, pos, ...] tensor, as if alone
    study.finish(figure, {"layers": ...})      # writes NAME.png and NAME.json, closes the figure
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sinklens.data.pope import pope as pope_questions
from sinklens.data.questions import presence
from sinklens.data.scenes import scene
from sinklens.eval.figures import plain
from sinklens.eval.loop import Options, describe_stack, prompt_template
from sinklens.eval.study_settings import StudySettings
from sinklens.run import Runner

# the paper's map layers (10-12 of LLaVA-1.5-7B's 32), at the same depth of other models
PAPER_MAP_LAYERS = (10, 12)
PAPER_LAYERS = 32


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
    """One run of a study: its settings, the loaded model and runner, the start time."""

    settings: StudySettings
    loaded: Any
    runner: Runner
    started: float = field(default_factory=time.time)
    _correct: dict[tuple[str, str], list[bool]] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: StudySettings) -> Study:
        settings.out.mkdir(parents=True, exist_ok=True)
        runner = settings.model.open()
        return cls(settings=settings, loaded=runner.loaded, runner=runner)

    def find_sinks(self, **kwargs: Any) -> Any:
        """FindSinks with the run's `--tau` (the model's default when not given)."""
        import sinklens

        return sinklens.FindSinks(tau=self.settings.tau, **kwargs)

    @property
    def tau(self) -> float:
        """The absolute sink threshold of this run."""
        return self.find_sinks().threshold(self.loaded.d_model, self.loaded.default_tau)

    @property
    def name(self) -> str:
        return self.settings.name

    def source(self, index: int) -> tuple[Any, str]:
        """(source, question) of prompt `index`: a held-out scene, or the index-th image of --images."""
        if self.settings.image_files is not None:
            return UserImage(self.settings.image_files[index]), self.settings.question
        source = scene("heldout", index)
        return source, self.settings.question.format(object=source.objects[0].shape)

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

        total, size = n or self.settings.n, self.settings.batch_size
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
        images, data = self.settings.images, self.settings.data
        shown = f" [{data.name}]" if data is not None else f" [{images.name or images}/]" if images is not None else ""
        return f"{self.loaded.name}{shown} (tau = {self.tau:g}): {what}{where}"

    def _where(self, split: str) -> str:
        return f"file-{Path(self.settings.data).stem}" if self.settings.data is not None else split

    def pope(self, label: str, split: str, n: int, interventions: Sequence[Any] = ()) -> dict[str, Any]:
        """POPE metrics of one setting, through the resumable `sinklens.eval.loop.evaluate`.

        The rows go to RUNS/SPLIT/LABEL-HASH (RUNS: --runs, default OUT/pope_runs; HASH: the
        setting's model, questions, stack and decoding), so an identical setting is computed once.
        With --data the questions are the file's first n, whatever `split` says.
        """
        from sinklens.eval import pope
        from sinklens.eval.folder import RunFolder
        from sinklens.eval.loop import evaluate

        settings, where = self.settings, self._where(split)
        data = settings.data
        key = json.dumps({"model": self.loaded.name, "questions": str(Path(data).resolve()) if data else split,
                          "suffix": settings.suffix, "stack": describe_stack(interventions)})  # fmt: skip
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        runs = settings.runs or settings.out / "pope_runs"
        out = runs / where / f"{label}-{digest}"
        if settings.questions is not None:
            questions = replace(settings.questions, items=settings.questions.items[:n])
        else:
            questions = pope.synthetic(split, n)
        with RunFolder(out, "pope", wait=True) as folder:  # another study on the same runs folder: wait for its rows
            result = evaluate(self.loaded, self.runner, questions, out=folder, interventions=list(interventions),
                              options=Options(max_new_tokens=3, batch_size=settings.batch_size,
                                              share_prefixes=settings.share_prefixes))  # fmt: skip
        keep = ("accuracy", "precision", "recall", "f1", "yes_ratio", "n")
        ids = [e.id for e in pope_questions(split, n)] if data is None else [item.id for item in questions.items]
        answered = pope.correct_answers(out, ids)
        self._correct[(label, where)] = [answered[i] for i in ids]
        return {"setting": label, "split": where, "rows": str(out.relative_to(runs)), **{k: result[k] for k in keep}}

    def compare(self, a: str, b: str, split: str) -> dict[str, Any]:
        """Setting `b` against setting `a` (labels given to `pope`) on the same examples: paired CI and McNemar p."""
        from sinklens.eval.stats import paired

        where = self._where(split)
        return {"a": a, "b": b, "split": where,
                **paired(self._correct[(a, where)], self._correct[(b, where)], seed=self.settings.seed)}  # fmt: skip

    def prompt_source(self) -> dict[str, Any]:
        """Where the prompts came from, for the JSON: scenes or --images, --data, the question template, the chat template."""
        images, data = self.settings.images, self.settings.data
        return {
            "images": str(images) if images is not None else "synthetic held-out scenes",
            "question": self.settings.question,
            "data": str(data) if data is not None else None,
            "prompt_template": prompt_template(self.loaded),
        }

    def finish(self, figure: Any, data: dict[str, Any]) -> dict[str, Any]:
        """Write NAME.png and NAME.json (with the model, n, smoke, the batch size and the wall time); close the figure."""
        import matplotlib.pyplot as plt

        settings = self.settings
        png = settings.out / f"{self.name}.png"
        figure.savefig(png, dpi=120, bbox_inches="tight")
        plt.close(figure)
        record = {
            "study": self.name,
            "model": self.loaded.name,
            "n": settings.n,
            "smoke": settings.smoke,
            "seed": settings.seed,
            "n_layers": self.loaded.n_layers,
            "sink_dims": list(self.loaded.sink_dims or ()),
            "tau": self.tau,
            "tau_rule": settings.tau_rule,
            "remote": settings.model.remote,
            "batch_size": settings.batch_size,
            "prompts": self.prompt_source(),
            "attention": self.loaded.attention,
            **data,
            "seconds": round(time.time() - self.started, 1),
        }
        path = settings.out / f"{self.name}.json"
        path.write_text(json.dumps(plain(record), indent=1) + "\n")
        print(f"wrote {png} and {path}")
        return record
