"""Table: POPE (random, popular, adversarial) of the baseline against VAR, and VAR's ablations.

Every setting runs in this process on the same examples as the baseline:
- VAR over a grid of rho and p in both conventions (`paper`: r >= rho, p moves;
  `released`: the authors' code, sink share q <= rho, p stays; SPEC section 5), so the
  same nominal (rho, p) means different edits in the two conventions;
- head selection: VAR on every (head, text query) versus image-centric ones
  (paper convention, rho 0.8, p 0.6);
- budget destination: to visual non-sinks (the method), to text non-sinks, to both.
"""

from __future__ import annotations

import sinklens as sl
from sinklens.data.pope import SPLITS
from sinklens.eval.study import Study, figure, parse_args

NAME = "table_var"
GRID_RHO, GRID_P = (0.5, 0.8), (0.3, 0.6)
METHOD = {"rho": 0.8, "p": 0.6}


def settings(study: Study) -> list[tuple[str, str, list]]:
    """(label, group, stack) of every setting, baseline first."""
    smoke = study.args.smoke
    rhos, ps = ((0.8,), (0.6,)) if smoke else (GRID_RHO, GRID_P)
    rows: list[tuple[str, str, list]] = [("baseline", "baseline", [])]
    for convention in ("paper", "released"):
        for rho in rhos:
            for p in ps:
                var = sl.VAR(rho=rho, p=p, convention=convention)
                rows.append((f"VAR {convention} rho={rho} p={p}", "grid", [study.find_sinks(convention=convention), var]))
    rows.append(("VAR all heads", "heads", [study.find_sinks(), sl.VAR(heads="all", **METHOD)]))
    rows.append(("VAR to text", "destination", [study.find_sinks(), sl.VAR(destination="text", **METHOD)]))
    if not smoke:  # the smoke run keeps one destination ablation, to stay under 40 s
        rows.append(("VAR to image and text", "destination", [study.find_sinks(), sl.VAR(destination="both", **METHOD)]))
    return rows


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__.splitlines()[0], n=60, smoke_n=2, argv=argv)
    study = Study.start(args)
    rows = []
    table = settings(study)
    for label, group, stack in table:
        for split in SPLITS:
            slug = label.replace(" ", "_").replace("=", "")
            rows.append({"group": group, "stack": [repr(m) for m in stack], **study.pope(slug, split, args.n, stack)})
            rows[-1]["setting"] = label
    labels = [label for label, _, _ in table]
    fig, ax = figure(figsize=(7.6, 0.42 * len(labels) * 1.6 + 1.2))
    height = 0.26
    for k, split in enumerate(SPLITS):
        accuracy = [100 * next(r["accuracy"] for r in rows if r["setting"] == label and r["split"] == split) for label in labels]
        ys = [i + (k - 1) * height for i in range(len(labels))]
        ax.barh(ys, accuracy, height=height, label=split)
        for y, a in zip(ys, accuracy):
            ax.text(a + 0.5, y, f"{a:.1f}", va="center", fontsize=6)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(50, color="k", ls=":", lw=0.8)
    ax.set_xlim(0, 105)
    ax.set_xlabel("POPE accuracy (%)")
    ax.legend(title="split", fontsize=7, title_fontsize=7, loc="lower right")
    ax.set_title(study.title(f"POPE, baseline vs VAR (layers 2..L-2; released: 2..L-1), n = {args.n} per split"), fontsize=9)
    fig.tight_layout()
    return study.finish(fig, {"splits": list(SPLITS), "grid": {"rho": GRID_RHO, "p": GRID_P} if not args.smoke else
                              {"rho": [0.8], "p": [0.6]}, "method": METHOD, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
