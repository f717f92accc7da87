"""Effect against cost: one panel per concept, one curve per method, a point per coefficient."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from workbench.io import atomic_save_figure


def plot_sweep(rows: list[dict[str, Any]], cfg: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    fig, axes = plt.subplots(1, len(concepts), figsize=(4.5 * len(concepts), 3.8), squeeze=False)
    for ax, concept in zip(axes[0], concepts):
        mine = [r for r in rows if r["concept"] == concept]
        for method in cfg.methods:
            xs, ys, cs = [], [], []
            for c in cfg.coeffs:
                sel = [r for r in mine if r["method"] == method and r["coeff"] == c]
                vals = [r[cfg.select_by] for r in sel if not math.isnan(r[cfg.select_by])]
                if sel and vals:
                    xs.append(sel[0]["kl"])
                    ys.append(sum(vals) / len(vals))
                    cs.append(c)
            ax.plot(xs, ys, marker="o", label=method)
            for x, y, c in zip(xs, ys, cs):
                ax.annotate(f"{c:g}", (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points")
        ax.set_xscale("symlog", linthresh=1e-2)
        ax.set_xlabel("KL from unsteered model on neutral text (nats/token)")
        ax.set_ylabel(f"{cfg.select_by} (all prompts)")
        ax.set_title(concept)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
