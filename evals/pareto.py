"""Pareto plot of several SAEs: FVU and CE loss score against L0 (PNG, matplotlib).

Each point carries its bootstrap 95% interval as a vertical error bar (eval.json's `intervals`),
so two SAEs whose bars overlap are not told apart by this evaluation's sample."""

from __future__ import annotations

from pathlib import Path

from evals.result import EvalResult
from workbench.io import atomic_save_figure


def pareto_plot(results: list[EvalResult], path: str | Path) -> Path:
    """Two panels (FVU vs L0, CE loss score vs L0), one point per SAE with its 95% interval as an
    error bar, grouped by architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    by_arch: dict[str, list[EvalResult]] = {}
    for r in results:
        by_arch.setdefault(str(r.sae.get("architecture", "?")), []).append(r)
    for arch, rs in sorted(by_arch.items()):
        rs = sorted(rs, key=lambda r: r.get("l0") or 0)
        for ax, key in zip(axes, ("fvu", "ce_loss_score")):
            pts = [(r.get("l0"), r.get(key), r.interval(key)) for r in rs
                   if r.get("l0") is not None and r.get(key) is not None]
            if pts:
                ys = [p[1] for p in pts]
                # asymmetric bars from the interval's ends; 0 where a point has none
                lo = [max(y - p[2]["low"], 0.0) if p[2] else 0.0 for y, p in zip(ys, pts)]
                hi = [max(p[2]["high"] - y, 0.0) if p[2] else 0.0 for y, p in zip(ys, pts)]
                ax.errorbar([p[0] for p in pts], ys, yerr=[lo, hi], marker="o", capsize=3, label=arch)
    axes[0].set(xlabel="L0 (active features per token)", ylabel="FVU (lower is better)", xscale="log")
    axes[1].set(xlabel="L0 (active features per token)", ylabel="CE loss score (higher is better)", xscale="log")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{len(results)} SAE{'s' if len(results) != 1 else ''}")
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=120)
