"""Matplotlib figures of the feature geometry (used by the notebook; the browser draws its own SVG)."""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_spectrum(eigenvalues, slope: float, intercept: float, ax=None):
    """Decoder covariance eigenvalues on log-log axes with the fitted power law."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    ev = np.asarray(eigenvalues)
    r = np.arange(1, len(ev) + 1)
    ax.loglog(r, ev, ".", ms=3, label="eigenvalues of cov(W_dec)")
    ax.loglog(r, np.exp(intercept) * r ** slope, "-", lw=1, label=f"power law, slope {slope:.2f}")
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=8)
    return ax.figure


def plot_cluster_pca(coords: np.ndarray, winner: np.ndarray, title: str = "", ax=None):
    """A cluster's reconstructions in their top-2 PCA plane, coloured by the strongest member."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.4))
    members = np.unique(winner)
    for m in members:
        sel = winner == m
        ax.scatter(coords[sel, 0], coords[sel, 1], s=4, label=f"#{m}")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    if len(members) <= 8:
        ax.legend(fontsize=7, markerscale=2)
    return ax.figure


def plot_feature_map(coords: np.ndarray, density: np.ndarray, labels: np.ndarray | None = None, ax=None):
    """All features in 2-D (decoder geometry), coloured by cluster or by log10 density."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.2))
    c = labels if labels is not None else np.log10(np.maximum(density, 1e-7))
    sc = ax.scatter(coords[:, 0], coords[:, 1], c=c, s=3, cmap="tab10" if labels is not None else "viridis")
    if labels is None:
        ax.figure.colorbar(sc, ax=ax, label="log10 density")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.figure


def plot_planes_by_token(coords: np.ndarray, labels, planes=((1, 2), (2, 3), (3, 4), (4, 5)), order=None,
                         indices: list[dict] | None = None, title: str = ""):
    """Points in PC planes (1-based pairs), one colour per token, as in Engels et al.'s figures; with
    `indices` (rows from `plane_indices`) each panel's title carries its separability and mixture."""
    plt = _plt()
    labels = np.asarray(labels)
    names = list(order) if order is not None else list(dict.fromkeys(labels.tolist()))
    cmap = plt.get_cmap("hsv" if len(names) > 10 else "tab10")
    fig, axes = plt.subplots(1, len(planes), figsize=(3.2 * len(planes), 3.2), squeeze=False)
    by_plane = {(r["pc_a"], r["pc_b"]): r for r in indices or []}
    for ax, (a, b) in zip(axes[0], planes):
        for j, name in enumerate(names):
            sel = labels == name
            if sel.any():
                ax.scatter(coords[sel, a - 1], coords[sel, b - 1], s=5,
                           color=cmap(j / max(len(names), 1) if len(names) > 10 else j), label=str(name))
        r = by_plane.get((a, b))
        ax.set_title(f"PC{a}-PC{b}" + (f"  S={r['separability']:.2f} M={r['mixture']:.2f}" if r else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=6, markerscale=2, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
