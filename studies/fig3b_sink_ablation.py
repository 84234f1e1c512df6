"""Fig. 3b: POPE accuracy unablated, with the visual sinks ablated, and with as many random image tokens ablated.

Ablation removes the attention of the text queries (and of generated tokens)
to those keys before the softmax, in every layer. Random ablation draws as
many non-sink image tokens per layer and prompt, with several seeds. Every
setting answers the same questions, so each pair of settings is compared per
example: the accuracy difference with a bootstrap 95% CI and McNemar's exact p.
"""

from __future__ import annotations

import sinklens as sl
from sinklens.data.pope import SPLITS
from sinklens.eval.stats import describe
from sinklens.eval.figures import figure, mean_and_spread
from sinklens.eval.study import Study
from sinklens.eval.study_settings import parse_args

NAME = "fig3b_sink_ablation"


def _options(parser) -> None:
    parser.add_argument("--split", choices=SPLITS, default="popular", help="synthetic POPE split (default popular)")
    parser.add_argument("--seeds", type=int, default=3, help="random-ablation seeds (default 3; 2 with --smoke)")


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__.splitlines()[0], n=100, smoke_n=4, argv=argv, scored=True, extra=_options)
    study = Study.start(settings)
    split = settings.own.split
    seeds = list(range(settings.seed, settings.seed + (2 if settings.smoke else settings.own.seeds)))
    rows = [study.pope("baseline", split, settings.n),
            study.pope("visual_sinks", split, settings.n, [study.find_sinks(), sl.SinkAblation()])]  # fmt: skip
    for seed in seeds:
        rows.append(study.pope(f"random_seed{seed}", split, settings.n, [study.find_sinks(), sl.RandomAblation(seed=seed)]))
    random_rows = rows[2:]
    comparisons = [study.compare("baseline", "visual_sinks", split)]
    comparisons += [study.compare("baseline", f"random_seed{seed}", split) for seed in seeds]
    comparisons += [study.compare(f"random_seed{seed}", "visual_sinks", split) for seed in seeds]
    summary = {
        "baseline": rows[0]["accuracy"],
        "visual_sinks": rows[1]["accuracy"],
        "random": mean_and_spread([r["accuracy"] for r in random_rows]),
        "random_f1": mean_and_spread([r["f1"] for r in random_rows]),
    }
    where = rows[0]["split"]
    fig, ax = figure(figsize=(6.4, 4.4))
    names = ["unablated", "visual sinks\nablated", f"random image tokens\nablated ({len(seeds)} seeds)"]
    values = [100 * summary["baseline"], 100 * summary["visual_sinks"], 100 * summary["random"]["mean"]]
    bars = ax.bar(names, values, color=["0.6", "C3", "C0"],
                  yerr=[0, 0, 100 * summary["random"]["std"]], capsize=6)  # fmt: skip
    for seed_row in random_rows:
        ax.plot([2], [100 * seed_row["accuracy"]], "k.", ms=6)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, 2, f"{value:.1f}", ha="center", color="white", fontsize=9)
    notes = [f"sinks - unablated: {describe(comparisons[0])}"]
    notes += [f"random seed {seed} - unablated: {describe(c)}" for seed, c in zip(seeds, comparisons[1 : 1 + len(seeds)])]
    ax.text(0.02, 0.98, "paired difference, points [95% CI], McNemar p\n" + "\n".join(notes),
            transform=ax.transAxes, va="top", fontsize=6.5, family="monospace")  # fmt: skip
    ax.axhline(50, color="k", ls=":", lw=0.8, label="chance (balanced)")
    ax.set_ylabel(f"POPE {where} accuracy (%)")
    ax.set_ylim(0, 118)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(study.title(f"attention removed in all layers, POPE {where}, n = {settings.n}"), fontsize=9)
    fig.tight_layout()
    return study.finish(fig, {"split": where, "seeds": seeds, "layers": "all", "rows": rows, "summary": summary,
                              "comparisons": comparisons})  # fmt: skip


if __name__ == "__main__":
    main()
