"""One loop for every benchmark: questions asked in batches, answered by a runner, rows written as they come.

A `Benchmark` says what to ask (`items`), where the questions come from
(`source`), how a prompt is asked (`asking`), how an answer becomes a row
(`score`) and how rows become metrics (`metrics`); `Options` say how to decode
and batch. `answers` is the loop: the only place where batches are formed.
`evaluate` runs it into a resumable, locked folder (`sinklens.eval.folder`):
the rows already answered are skipped, the settings are checked against the
folder's, the metrics are written at the end.

    bench = pope.synthetic("random", n=300)             # or pope.from_file(...), vqa.from_file(...)
    metrics = evaluate(lm, runner, bench, out="out/pope", interventions=[FindSinks(), VAR()],
                       options=Options(max_new_tokens=3, batch_size=8))

Answers do not depend on the batch size: prompts are padded on the left and
every example keeps its own image spans and sink sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sinklens.errors import ParameterError
from sinklens.eval.folder import RunFolder
from sinklens.run.prefixes import PrefixStore, Sharing

if TYPE_CHECKING:
    from sinklens.models.loaded import LoadedModel
    from sinklens.run import Members, Runner

QUESTION = "{question}"  # the placeholder the prompt template shows


@dataclass(frozen=True)
class Item:
    """One question to ask: its id, how to get its image, the text asked, and what its row records besides the answer."""

    id: str
    image: Callable[[], Any]
    text: str
    record: Mapping[str, Any] = field(default_factory=dict)


def check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ParameterError(f"--batch-size must be an integer >= 1, got {batch_size!r}")


@dataclass(frozen=True, kw_only=True)
class Options:
    """How questions are answered: greedy decoding of `max_new_tokens` tokens, `batch_size` questions per pass."""

    max_new_tokens: int
    batch_size: int = 1
    progress: bool = True
    # compute each distinct image prefix once and continue every question from its cache (sinklens.run.prefixes);
    # the answers are the same either way
    share_prefixes: bool = True

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ParameterError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens!r}")

    def generation(self) -> dict[str, Any]:
        """What `NnsightRunner.generate` does: greedy, exactly `max_new_tokens` tokens (EOS does not stop it)."""
        return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens, "min_new_tokens": self.max_new_tokens}


@dataclass(frozen=True, kw_only=True)
class Benchmark:
    """A benchmark's questions and how to ask and score them."""

    kind: str  # the folder's file names: KIND.jsonl, KIND.settings.json, KIND.json
    name: str  # for the progress bar
    items: tuple[Item, ...]
    source: Mapping[str, Any]  # where the questions come from, as the settings record it
    asking: Callable[[LoadedModel, Options], dict[str, Any]]  # how a prompt is asked, as the settings record it
    score: Callable[[Item, str], dict[str, Any]]  # the row of an answered item
    metrics: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]


def describe_stack(interventions: Members) -> list[str]:
    """A stable description of a stack (interventions are frozen dataclasses with exact reprs)."""
    return [repr(intervention) for intervention in interventions]


def prompt_template(loaded: LoadedModel) -> str:
    """The exact prompt the model reads, with `{question}` where the question goes (the chat template's)."""
    return loaded.prompt(1, QUESTION)


@dataclass
class SharingTally:
    """How the questions of a run were answered: with shared image prefixes (how many computed), or why not."""

    shared: bool = True
    questions: int = 0
    prefixes: int = 0
    reason: str = ""

    def count(self, sharing: Sharing | None, questions: int) -> None:
        self.questions += questions
        if sharing is None or not sharing.shared:
            self.shared = False
            self.reason = self.reason or (sharing.reason if sharing is not None else "--no-shared-prefix")
        else:
            self.prefixes += sharing.computed

    def as_dict(self) -> dict[str, Any]:
        """For the metrics file: shared or not, how many prefixes served how many questions (this run's), or why not."""
        if not self.shared:
            return {"shared": False, "questions": self.questions, "reason": self.reason}
        return {"shared": True, "questions": self.questions, "prefixes": self.prefixes}


def answers(
    loaded: LoadedModel, runner: Runner, items: Sequence[Item], interventions: Members, options: Options, *, desc: str,
    total: int | None = None, tally: SharingTally | None = None,
) -> Iterator[list[tuple[Item, str]]]:
    """The answers to `items`, one batch of (item, answer) at a time, with a progress bar over `total` questions.

    Items are asked in order, `batch_size` at a time; with `share_prefixes` a
    store keeps the image prefixes of the current and the previous batch, so
    consecutive questions about one image compute it once (a benchmark that
    lists each image's questions together, as POPE does, gets every prefix
    computed once). `tally` counts how.
    """
    from tqdm.auto import tqdm

    total = len(items) if total is None else total
    store = PrefixStore.for_stack(interventions, capacity=options.batch_size + 1) if options.share_prefixes else None
    tally = tally if tally is not None else SharingTally()
    with tqdm(total=total, initial=total - len(items), desc=desc, disable=not options.progress) as bar:
        for start in range(0, len(items), options.batch_size):
            batch = items[start : start + options.batch_size]
            inputs = loaded.prepare_batch([(item.image(), item.text) for item in batch])
            kwargs = {"prefixes": store} if store is not None else {}
            result = runner.generate(inputs, interventions, max_new_tokens=options.max_new_tokens, **kwargs)
            tally.count(result.sharing if store is not None else None, len(batch))
            yield list(zip(batch, result.texts, strict=True))
            bar.update(len(batch))


def evaluate(
    loaded: LoadedModel,
    runner: Runner,
    benchmark: Benchmark,
    *,
    out: Path | str | RunFolder,
    interventions: Members = (),
    options: Options,
    settings: Mapping[str, Any] | None = None,
    on_example: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Answer a benchmark's questions not yet in `out`, write their rows, and return the metrics of them all.

    `out` is a folder path or an open, locked `RunFolder` (the CLI locks before
    loading the model, so a busy folder is refused at once). `settings` adds
    what else the rows depend on (the stack's parameters, say) to what the
    folder records.
    """
    wanted = {
        "model": loaded.name,
        **benchmark.source,
        "stack": describe_stack(interventions),
        **benchmark.asking(loaded, options),
        "generation": options.generation(),
        **dict(settings or {}),
    }
    if isinstance(out, RunFolder):
        return _evaluate(loaded, runner, benchmark, out, wanted, interventions, options, on_example)
    with RunFolder(out, benchmark.kind) as folder:
        return _evaluate(loaded, runner, benchmark, folder, wanted, interventions, options, on_example)


def _evaluate(
    loaded: LoadedModel, runner: Runner, benchmark: Benchmark, folder: RunFolder, wanted: dict[str, Any],
    interventions: Members, options: Options, on_example: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    folder.check(wanted)
    done = {row["id"]: row for row in folder.rows()}
    todo = [item for item in benchmark.items if item.id not in done]
    tally = SharingTally()
    for batch in answers(loaded, runner, todo, interventions, options, desc=benchmark.name, total=len(benchmark.items),
                         tally=tally):  # fmt: skip
        rows = [benchmark.score(item, answer) for item, answer in batch]
        folder.append(rows)
        for row in rows:
            done[row["id"]] = row
            if on_example is not None:
                on_example(row)
    result = {**wanted, **benchmark.metrics([done[item.id] for item in benchmark.items]), "prefix_sharing": tally.as_dict()}
    folder.write_metrics(result)
    return result


def correct(out: Path | str, kind: str, ids: Sequence[str] | None = None) -> dict[str, bool]:
    """{id: answered correctly} of the rows in an evaluation folder (the ones in `ids` when given), for paired statistics.

    A row is correct when its `score` is 1 (VQA) or its prediction equals its label (POPE).
    """
    rows = RunFolder(out, kind).rows()
    by_id = {row["id"]: (row["score"] == 1 if "score" in row else row["label"] == row["prediction"]) for row in rows}
    return by_id if ids is None else {i: by_id[i] for i in ids}
