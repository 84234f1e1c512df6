"""Table: POPE (random, popular, adversarial) of the baseline against VAR, and VAR's ablations.

Every setting runs in this process on the same examples as the baseline:
- VAR over a grid of rho and p in both conventions (`paper`: r >= rho, p moves;
  `released`: the authors' code, sink share q <= rho, p stays; SPEC section 5), so the
  same nominal (rho, p) means different edits in the two conventions;
- head selection: VAR on every (head, text query) versus image-centric ones
  (paper convention, rho 0.8, p 0.6);
- budget destination: to visual non-sinks (the method), to text non-sinks, to both.

Each row is compared with the baseline on the same questions: the accuracy
difference with a bootstrap 95% CI and McNemar's exact p (in the JSON's
`comparisons` and next to each bar). `--splits` picks the synthetic splits,
`--no-grid` keeps only the method's (rho, p) of the grid.
"""

from __future__ import annotations

import argparse

import sinklens as sl
from sinklens.data.pope import SPLITS
from sinklens.eval.stats import describe
from sinklens.eval.figures import figure
from sinklens.eval.study import Study
from sinklens.eval.study_settings import parse_args

NAME = "table_var"
GRID_RHO, GRID_P = (0.5, 0.8), (0.3, 0.6)
METHOD = {"rho": 0.8, "p": 0.6}


def stacks(study: Study) -> list[tuple[str, str, list]]:
    """(label, group, stack) of every setting, baseline first."""
    smoke = study.settings.smoke
    rhos, ps = ((0.8,), (0.6,)) if smoke or not study.settings.own.grid else (GRID_RHO, GRID_P)
    rows: list[tuple[str, str, list]] = [("baseline", "baseline", [])]
    for convention in ("paper", "released"):
        for rho in rhos:
            for p in ps:
                var = sl.VAR(rho=rho, p=p, convention=convention)
                rows.append((f"VAR {convention} rho={rho} p={p}", "grid", [study.find_sinks(convention=convention), var]))
    if study.settings.own.settings == "method":
        return [row for row in rows if row[0] in ("baseline", f"VAR paper rho={METHOD['rho']} p={METHOD['p']}")]
    rows.append(("VAR all heads", "heads", [study.find_sinks(), sl.VAR(heads="all", **METHOD)]))
    rows.append(("VAR to text", "destination", [study.find_sinks(), sl.VAR(destination="text", **METHOD)]))
    if not smoke:  # the smoke run keeps one destination ablation, to stay under 40 s
        rows.append(("VAR to image and text", "destination", [study.find_sinks(), sl.VAR(destination="both", **METHOD)]))
    return rows


def _options(parser) -> None:
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="synthetic POPE splits (default: all three; ignored with --data)")  # fmt: skip
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                        help="VAR over the rho x p grid (default on); --no-grid: the method's rho 0.8, p 0.6 only")  # fmt: skip
    parser.add_argument("--settings", choices=("all", "method"), default="all",
                        help="all rows (default), or only the baseline and VAR as the paper specifies it "
                             "(paper convention, rho 0.8, p 0.6): a first, cheap pass whose rows a later 'all' run reuses")  # fmt: skip


def _slug(label: str) -> str:
    return label.replace(" ", "_").replace("=", "")


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__.splitlines()[0], n=60, smoke_n=2, argv=argv, scored=True, extra=_options)
    study = Study.start(settings)
    splits = ["file"] if settings.data is not None else list(dict.fromkeys(settings.own.splits))
    rows, comparisons = [], []
    table = stacks(study)
    for label, group, stack in table:
        for split in splits:
            rows.append({"group": group, "stack": [repr(m) for m in stack], **study.pope(_slug(label), split, settings.n, stack)})
            rows[-1]["setting"] = label
            if label != "baseline":
                comparison = study.compare("baseline", _slug(label), split)
                rows[-1]["vs_baseline"] = comparison
                comparisons.append({**comparison, "a": "baseline", "b": label})
    shown = list(dict.fromkeys(r["split"] for r in rows))
    labels = [label for label, _, _ in table]
    fig, ax = figure(figsize=(9.0, 0.42 * len(labels) * (0.6 + 0.35 * len(shown)) + 1.4))
    height = 0.8 / len(shown)
    for k, split in enumerate(shown):
        picked = [next(r for r in rows if r["setting"] == label and r["split"] == split) for label in labels]
        accuracy = [100 * r["accuracy"] for r in picked]
        ys = [i + (k - (len(shown) - 1) / 2) * height for i in range(len(labels))]
        ax.barh(ys, accuracy, height=height, label=split)
        for y, a, r in zip(ys, accuracy, picked):
            note = f"{a:.1f}" + (f"  {describe(r['vs_baseline'])}" if "vs_baseline" in r else "")
            ax.text(a + 0.5, y, note, va="center", fontsize=5.5)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(50, color="k", ls=":", lw=0.8)
    ax.set_xlim(0, 150)
    ax.set_xlabel("POPE accuracy (%); next to each bar: minus the baseline, points [95% CI], McNemar p")
    ax.legend(title="split", fontsize=7, title_fontsize=7, loc="lower right")
    ax.set_title(study.title(f"POPE, baseline vs VAR (layers 2..L-2; released: 2..L-1), n = {settings.n} per split"), fontsize=9)
    fig.tight_layout()
    full = settings.own.grid and not settings.smoke
    return study.finish(fig, {"splits": shown, "grid": {"rho": GRID_RHO, "p": GRID_P} if full else
                              {"rho": [0.8], "p": [0.6]}, "method": METHOD, "rows": rows,
                              "comparisons": comparisons})  # fmt: skip


if __name__ == "__main__":
    main()
