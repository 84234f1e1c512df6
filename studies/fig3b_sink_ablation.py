"""Fig. 3b: POPE accuracy unablated, with the visual sinks ablated, and with as many random image tokens ablated.

Ablation removes the attention of the text queries (and of generated tokens)
to those keys before the softmax, in every layer. Random ablation draws as
many non-sink image tokens per layer and prompt, with several seeds.
"""

from __future__ import annotations

import sinklens as sl
from sinklens.eval.study import Study, figure, mean_and_spread, parse_args

NAME = "fig3b_sink_ablation"
SPLIT = "popular"


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__.splitlines()[0], n=100, smoke_n=4, argv=argv)
    study = Study.start(args)
    seeds = list(range(args.seed, args.seed + (2 if args.smoke else 3)))
    rows = [study.pope("baseline", SPLIT, args.n),
            study.pope("visual_sinks", SPLIT, args.n, [study.find_sinks(), sl.SinkAblation()])]  # fmt: skip
    for seed in seeds:
        rows.append(study.pope(f"random_seed{seed}", SPLIT, args.n, [study.find_sinks(), sl.RandomAblation(seed=seed)]))
    random_rows = rows[2:]
    summary = {
        "baseline": rows[0]["accuracy"],
        "visual_sinks": rows[1]["accuracy"],
        "random": mean_and_spread([r["accuracy"] for r in random_rows]),
        "random_f1": mean_and_spread([r["f1"] for r in random_rows]),
    }
    fig, ax = figure(figsize=(5.6, 3.8))
    names = ["unablated", "visual sinks\nablated", f"random image tokens\nablated ({len(seeds)} seeds)"]
    values = [100 * summary["baseline"], 100 * summary["visual_sinks"], 100 * summary["random"]["mean"]]
    bars = ax.bar(names, values, color=["0.6", "C3", "C0"],
                  yerr=[0, 0, 100 * summary["random"]["std"]], capsize=6)  # fmt: skip
    for seed_row in random_rows:
        ax.plot([2], [100 * seed_row["accuracy"]], "k.", ms=6)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, 2, f"{value:.1f}", ha="center", color="white", fontsize=9)
    ax.axhline(50, color="k", ls=":", lw=0.8, label="chance (balanced)")
    ax.set_ylabel(f"POPE {SPLIT} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(study.title(f"attention removed in all layers, POPE {SPLIT}, n = {args.n}"), fontsize=9)
    fig.tight_layout()
    return study.finish(fig, {"split": SPLIT, "seeds": seeds, "layers": "all", "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
