"""Print the numbers docs/results.md quotes, as Markdown, from the JSON the studies wrote.

    python studies/summarize_results.py docs/results/tau20 docs/results/tau16

For each folder: POPE rows (accuracy, F1, yes-ratio, n) with each comparison's
paired difference, bootstrap 95% CI and McNemar p; the per-layer sink share;
and the one-line summaries of the map studies. Missing studies are reported as
missing (a run that has not finished), never filled in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def comparison(c: dict) -> str:
    low, high = c["ci95"]
    p = c["mcnemar_p"]
    return (f"{100 * c['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}], "
            f"p = {p:.2g} ({c['a_only']} vs {c['b_only']} discordant)")  # fmt: skip


def load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pope_tables(folder: Path) -> None:
    table = load(folder, "table_var")
    if table is None:
        print("table_var: missing")
    else:
        print(f"### table_var (tau {table['tau']:g}, split {', '.join(table['splits'])}, n = {table['n']} per setting)\n")
        print("| split | setting | accuracy | F1 | yes-ratio | n | minus baseline, points [95% CI], McNemar p |")
        print("|---|---|---|---|---|---|---|")
        for row in sorted(table["rows"], key=lambda row: table["splits"].index(row["split"])):  # stable: by split
            versus = comparison(row["vs_baseline"]) if "vs_baseline" in row else ""
            print(f"| {row['split']} | {row['setting']} | {pct(row['accuracy'])} | {pct(row['f1'])} | {pct(row['yes_ratio'])} "
                  f"| {row['n']} | {versus} |")  # fmt: skip
        print()
    ablation = load(folder, "fig3b_sink_ablation")
    if ablation is None:
        print("fig3b_sink_ablation: missing\n")
        return
    print(f"### fig3b_sink_ablation (tau {ablation['tau']:g}, split {ablation['split']}, n = {ablation['n']} per setting)\n")
    print("| setting | accuracy | F1 | yes-ratio | n |")
    print("|---|---|---|---|---|")
    for row in ablation["rows"]:
        print(f"| {row['setting']} | {pct(row['accuracy'])} | {pct(row['f1'])} | {pct(row['yes_ratio'])} | {row['n']} |")
    print()
    for c in ablation["comparisons"]:
        print(f"- {c['b']} minus {c['a']}: {comparison(c)}")
    print()


def maps(folder: Path) -> None:
    frequency = load(folder, "sink_frequency_by_layer")
    if frequency is not None:
        shares = [(r["layer"], r["visual_sink_share"]["mean"], r["text_sinks"]["mean"]) for r in frequency["per_layer"]]
        with_sinks = [(l, s) for l, s, _ in shares if s > 0]
        print(f"- sink_frequency_by_layer (n = {frequency['n']}): layers with visual sinks: "
              + (", ".join(f"{l}: {100 * s:.1f}%" for l, s in with_sinks) or "none")
              + f"; text sinks per layer {min(t for *_, t in shares[2:]):.1f}-{max(t for *_, t in shares[2:]):.1f} (layers 2+)")  # fmt: skip
    fig1 = load(folder, "fig1_attention_maps")
    if fig1 is not None:
        print(f"- fig1 (n = {fig1['n']}, layers {fig1['layers']}): visual sinks at layer {fig1['sink_layer']} per scene "
              f"{[e['n_visual_sinks'] for e in fig1['examples']]}, share of image attention on them {fig1['mean_share_on_sinks']:.3f}")  # fmt: skip
    fig2 = load(folder, "fig2_sink_dimensions")
    if fig2 is not None:
        tokens = {k: v for k, v in fig2["tokens"].items() if isinstance(v, dict)}
        print(f"- fig2 (n = {fig2['n']}, layer {fig2['layer']}): largest dim is a sink dim {fig2['largest_dim_is_a_sink_dim']}; "
              f"phi bos / largest image / smallest image: " + " / ".join(f"{tokens[k]['phi']:.1f}" for k in ("bos", "visual_sink", "visual_non_sink"))
              + f"; discovered {fig2['discovered_sink_dims']}; prompts with a visual sink at that layer: {fig2['prompts_with_a_visual_sink']}")  # fmt: skip
    fig3a = load(folder, "fig3a_phi_vs_attention")
    if fig3a is not None:
        print(f"- fig3a (n = {fig3a['n']}): Pearson r (phi, attention) in layers {fig3a['scatter_layers']}: {fig3a['pearson_r_scatter']}")
        rs = [row["pearson_r"] for row in fig3a["per_layer"] if row["pearson_r"] is not None]
        print(f"  - per-layer r from {min(rs):.2f} to {max(rs):.2f}, median {sorted(rs)[len(rs) // 2]:.2f}")
        for row in fig3a["per_layer"]:
            if row["n_sinks"]:
                ratio = row["mean_attention_sinks"] / row["mean_attention_non_sinks"]
                print(f"  - layer {row['layer']}: {row['n_sinks']} of {row['n_tokens']} image tokens are sinks, "
                      f"receiving {ratio:.1f}x the mean attention of the others; r = {row['pearson_r']:.2f}")  # fmt: skip
    fig3c = load(folder, "fig3c_contribution")
    if fig3c is not None:
        print(f"- fig3c (n = {fig3c['n']}): sink/random contribution {fig3c['mean_sink_over_random_contribution']}, "
              f"attention {fig3c['mean_sink_over_random_attention']}")  # fmt: skip
        for row in fig3c["per_layer"]:
            if row["sinks_contribution"]["n"]:
                print(f"  - layer {row['layer']} ({row['sinks_contribution']['n']} prompts with sinks): attention sinks / random "
                      f"{row['sinks_attention']['mean'] / row['random_attention']['mean']:.1f}x, contribution "
                      f"{row['sinks_contribution']['mean'] / row['random_contribution']['mean']:.1f}x, per unit attention "
                      f"{row['sinks_contribution_per_attention']:.0f} vs {row['random_contribution_per_attention']:.0f}")  # fmt: skip
    fig3d = load(folder, "fig3d_maps_without_sinks")
    if fig3d is not None:
        changes = [abs(e["image_attention_with"] - e["image_attention_without"]) for e in fig3d["examples"]]
        print(f"- fig3d (n = {fig3d['n']}): largest change of image attention when sinks are ablated: {max(changes):.4f}; "
              f"visual sinks per scene {[sum(map(sum, e['visual_sinks'])) for e in fig3d['examples']]}")  # fmt: skip
    fig4 = load(folder, "fig4_head_ranking")
    if fig4 is not None:
        print(f"- fig4 (n = {fig4['n']}): heads with r >= 0.8: {fig4['share_of_heads_with_r_at_least_0.8']:.3f}, "
              f">= 0.5: {fig4['share_of_heads_with_r_at_least_0.5']:.3f}; bottom heads "
              + ", ".join(f"L{r['layer']}H{r['head']} r={r['ratio']:.2f}" for r in fig4["ranked"][-3:]))  # fmt: skip


def main(folders: list[str]) -> None:
    for name in folders:
        folder = Path(name)
        print(f"## {folder}\n")
        pope_tables(folder)
        maps(folder)
        print()


if __name__ == "__main__":
    main(sys.argv[1:] or ["docs/results/tau20", "docs/results/tau16"])
