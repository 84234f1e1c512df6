"""Several stacks on the same questions, with paired statistics: `sinklens compare`.

The baseline (no intervention) always runs, first, under the name `baseline`.
Each stack answers the benchmark into a folder of its own (`OUT/NAME/`, its
rows one JSONL, resumable like `sinklens eval`); then every stack is compared
with the baseline, and each pair the user names with each other, on the same
questions: the metrics, the paired difference of accuracy (POPE, VQA) or of
hallucination-free captions (CHAIR) with its 95% bootstrap interval, and the
exact McNemar test.
Written to `OUT/compare.json` (the summary), `OUT/compare.jsonl` (one row per
question: each stack's answer and whether it is right) and `OUT/compare.png`
(the differences with their intervals; the title says model, benchmark and n).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sinklens.errors import ParameterError
from sinklens.eval.folder import RunFolder
from sinklens.eval.loop import Benchmark, Options, correct, evaluate
from sinklens.eval.stats import describe, paired
from sinklens.interventions.specs import describe as describe_spec

FILES = ("compare.json", "compare.jsonl", "compare.png")
BASELINE = "baseline"
# the metrics a table shows per benchmark kind (each from that benchmark's own metrics)
COLUMNS = {"pope": ("accuracy", "f1", "yes_ratio"), "vqa": ("accuracy",), "captions": ("chair_s", "chair_i", "accuracy")}


def check_stack_names(names: Sequence[str]) -> None:
    """Stack names are folder names: distinct and plain (letters, digits, `-`, `_`, `.`, `+`); `baseline` is taken."""
    if not names:
        raise ParameterError("compare needs at least one stack besides the baseline: give --stack NAME=SPEC, e.g. "
                             "--stack var='FindSinks(); VAR()', or --stacks FILE.toml")  # fmt: skip
    bad = [name for name in names if not name or not all(c.isalnum() or c in "-_.+" for c in name) or name.startswith(".")]
    if bad:
        raise ParameterError(f"stack names {bad} cannot be folder names; use letters, digits, '-', '_', '.' and '+'")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ParameterError(f"stack names {repeated} are given twice; each stack needs its own name")
    if BASELINE in names:
        raise ParameterError(f"{BASELINE!r} is the stack without interventions, which always runs; name yours otherwise")


def check_pairs(pairs: Sequence[tuple[str, str]], names: Sequence[str]) -> None:
    """Each named pair: two different stacks of this comparison."""
    known = [BASELINE, *names]
    for a, b in pairs:
        missing = [name for name in (a, b) if name not in known]
        if missing or a == b:
            raise ParameterError(f"--pair {a},{b}: " + (f"no stack named {missing} (the stacks: {', '.join(known)})"
                                 if missing else "a stack against itself"))  # fmt: skip


def compare(
    loaded: Any, runner: Any, benchmark: Benchmark, stacks: Mapping[str, list[Any]], *, out: Path, options: Options,
    pairs: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Run the baseline and every stack on `benchmark` (each resumable in `out/NAME`), then compare them."""
    check_stack_names(list(stacks))
    check_pairs(pairs, list(stacks))
    stacks = {BASELINE: [], **stacks}
    out.mkdir(parents=True, exist_ok=True)
    metrics = {name: evaluate(loaded, runner, benchmark, out=out / name, interventions=members, options=options)
               for name, members in stacks.items()}  # fmt: skip
    ids = [item.id for item in benchmark.items]
    right = {name: correct(out / name, benchmark.kind, ids) for name in stacks}
    versus = [(BASELINE, name) for name in stacks if name != BASELINE] + [tuple(pair) for pair in pairs]
    summary = {
        "model": loaded.name, "benchmark": benchmark.name, "kind": benchmark.kind, "n": len(ids), "reference": BASELINE,
        "correct_means": "no absent object named" if benchmark.kind == "captions" else "the answer is right",
        "stacks": {name: {"spec": describe_spec(list(members)), "accuracy": _accuracy(right[name].values()),
                          "metrics": _numbers(metrics[name])} for name, members in stacks.items()},
        "paired": {f"{b} vs {a}": {"a": a, "b": b, **paired([right[a][i] for i in ids], [right[b][i] for i in ids])}
                   for a, b in versus},
    }  # fmt: skip
    (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_rows(out, benchmark, list(stacks), ids)
    plot(summary, out / "compare.png")
    return summary


def table(summary: Mapping[str, Any]) -> str:
    """A markdown table of the summary: each stack's metrics, then every paired comparison."""
    columns = COLUMNS.get(summary["kind"], ("accuracy",))
    lines = [f"{summary['model']}, {summary['benchmark']}, n = {summary['n']}", "",
             "| stack | spec | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]  # fmt: skip
    for name, stack in summary["stacks"].items():
        values = [stack["metrics"].get(column, stack["accuracy"] if column == "accuracy" else float("nan")) for column in columns]
        lines.append(f"| {name} | `{stack['spec'] or '(none)'}` | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    lines += ["", f"| comparison | {summary['correct_means']}: points [95% CI], McNemar |", "|---|---|"]
    lines += [f"| {name} | {describe(comparison)} |" for name, comparison in summary["paired"].items()]
    return "\n".join(lines)


def plot(summary: Mapping[str, Any], path: Path) -> None:
    """Each stack's paired accuracy difference from the reference, in points, with its 95% bootstrap interval."""
    from sinklens.eval.figures import figure

    names = list(summary["paired"])
    fig, ax = figure(figsize=(6, 1.2 + 0.5 * len(names)))
    for row, name in enumerate(names):
        comparison = summary["paired"][name]
        low, high = (100 * v for v in comparison["ci95"])
        ax.plot([low, high], [row, row], color="tab:blue", linewidth=2)
        ax.plot([100 * comparison["difference"]], [row], "o", color="tab:blue")
    ax.axvline(0.0, color="grey", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(names)), names)
    # two lines: a caption benchmark's "no absent object named" makes one line wider than the figure
    ax.set_xlabel(f"difference in share where {summary['correct_means']}\n(points; 95% paired bootstrap CI)")
    ax.set_title(f"{summary['model']}, {summary['benchmark']}, n = {summary['n']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _write_rows(out: Path, benchmark: Benchmark, names: list[str], ids: list[str]) -> None:
    rows = {name: {row["id"]: row for row in RunFolder(out / name, benchmark.kind).rows()} for name in names}
    right = {name: correct(out / name, benchmark.kind, ids) for name in names}
    questions = {item.id: item.text for item in benchmark.items}
    with (out / "compare.jsonl").open("w") as f:
        for i in ids:
            first = rows[names[0]][i]
            shared = {"question": questions[i], **{key: first[key] for key in ("label", "image", "scene", "objects") if key in first}}
            answers = {name: {"answer": rows[name][i].get("answer"), "correct": right[name][i]} for name in names}
            f.write(json.dumps({"id": i, **shared, "stacks": answers}) + "\n")


def _accuracy(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
