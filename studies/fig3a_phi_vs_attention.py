"""Fig. 3a: phi of every image token against the attention it receives from the text."""

from __future__ import annotations

import torch

import sinklens as sl
from sinklens.eval.figures import figure
from sinklens.eval.study import Study, map_layers
from sinklens.eval.study_settings import parse_args

NAME = "fig3a_phi_vs_attention"


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-30))


def main(argv=None) -> dict:
    settings = parse_args(NAME, __doc__, n=20, smoke_n=2, argv=argv)
    study = Study.start(settings)
    lm = study.loaded
    layers = tuple(range(2, lm.n_layers - 1))
    shown = map_layers(lm.n_layers)
    finder = study.find_sinks()
    tau = finder.threshold(lm.d_model, lm.default_tau)
    phis = {l: [] for l in layers}
    attention = {l: [] for l in layers}
    for batch, inputs in study.batches():
        ctx = study.runner.forward(inputs, [finder, sl.AttentionMaps(layers=layers)]).ctx
        for e in batch:
            image = ctx.image.mask[e.row].cpu()
            for l in layers:
                phis[l].append(ctx.phi[l][e.row].cpu()[image])
                attention[l].append(ctx.records["attention_maps"][l][e.row][image])
    per_layer = []
    for l in layers:
        phi, attn = torch.cat(phis[l]), torch.cat(attention[l])
        sink = phi >= tau
        per_layer.append({
            "layer": l, "pearson_r": correlation(phi, attn),
            "mean_attention_sinks": float(attn[sink].mean()) if sink.any() else None,
            "mean_attention_non_sinks": float(attn[~sink].mean()) if (~sink).any() else None,
            "n_sinks": int(sink.sum()), "n_tokens": int(sink.numel()),
        })  # fmt: skip
    phi = torch.cat([torch.cat(phis[l]) for l in shown])
    attn = torch.cat([torch.cat(attention[l]) for l in shown])
    fig, axes = figure(1, 2, figsize=(10, 3.8))
    sink = phi >= tau
    axes[0].scatter(phi[~sink], attn[~sink], s=4, alpha=0.4, label="visual non-sinks")
    axes[0].scatter(phi[sink], attn[sink], s=6, alpha=0.6, color="C3", label="visual sinks")
    axes[0].axvline(tau, color="k", ls="--", lw=0.8, label=f"tau = {tau:g}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("phi(x_j) = max over sink dims |x_d| / RMS(x)")
    axes[0].set_ylabel("attention received")
    axes[0].set_title(f"layers {shown[0]}-{shown[-1]}: r = {correlation(phi, attn):.2f}", fontsize=9)
    axes[0].legend(fontsize=7)
    xs = [row["layer"] for row in per_layer]
    axes[1].plot(xs, [row["pearson_r"] for row in per_layer], "o-", ms=3, color="C2", label="Pearson r (phi, attention)")
    axes[1].set_xlabel("layer")
    axes[1].set_ylabel("Pearson r")
    axes[1].axhline(0, color="0.6", lw=0.6)
    axes[1].set_title("correlation per layer (image tokens)", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.suptitle(study.title(f"phi against attention received (mean over heads and text queries), {settings.n} prompts"), fontsize=10)
    fig.tight_layout()
    return study.finish(fig, {
        "tau": tau, "layers": layers, "scatter_layers": shown,
        "scatter": {"phi": phi, "attention": attn}, "pearson_r_scatter": correlation(phi, attn), "per_layer": per_layer,
    })  # fmt: skip


if __name__ == "__main__":
    main()
