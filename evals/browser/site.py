"""Write the static feature browser: opens from disk (file://), no server, no network.

    out/index.html           search by token / logit token / density, sort, page through features
    out/index_data.js        the index rows (loaded by <script src>, which file:// allows, unlike fetch)
    out/map.html             every feature in 2-D (decoder geometry); each point links to its page
    out/features/NNNNN.html  one page per feature (static HTML, readable without JavaScript)
    out/images/ID.png        top images (vision caches)
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from evals.browser.assets import APP, STYLE
from evals.features.html import CSS, esc, feature_html
from evals.features.store import FeatureData
from workbench.errors import WorkbenchError

log = logging.getLogger(__name__)


def page_name(f: int) -> str:
    return f"{f:05d}.html"


def _write(path: Path, text: str) -> None:
    """Plain writes: the whole site is built in a fresh directory that replaces the old one in
    one rename at the end, so files need no per-file temp+fsync (thousands of pages)."""
    path.write_text(text, encoding="utf-8")


def _head(title: str, css: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<link rel="stylesheet" href="{css}"></head><body>')


def index_rows(data: FeatureData) -> list[list]:
    t = data.tensors
    return [[f, round(float(t["density"][f]), 8), round(float(t["max"][f]), 5), data.top_tokens(f, 5),
             data.logit_tokens(f, 5)] for f in range(data.num_features)]


def build_browser(features_dir: str | Path, out: str | Path, *, title: str = "", progress: bool = True,
                  coords: np.ndarray | None = None, map_method: str = "umap", colour: str = "density") -> Path:
    """Write the browser for the feature data in `features_dir` into `out`; returns index.html.

    The map places features by `map_method` (umap, or spectral: see `evals.geometry.feature_map`)
    unless `coords` are given, and colours them by `colour`: density, or any per-feature
    statistic of the feature data (max, mean, nnz)."""
    data = FeatureData(features_dir)
    map_colour_values(data, colour)  # a bad choice fails before anything is written
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    out.chmod(0o755)
    (out / "features").mkdir()
    meta = data.meta
    title = title or f"Features of {Path(meta['sae_dir']).name} ({meta['hook']}, {meta['model_id']})"
    _write(out / "style.css", STYLE + CSS)
    _write(out / "app.js", APP)
    rows = index_rows(data)
    # ensure_ascii: the data file is pure ASCII, so no byte of corpus text can end the script early
    _write(out / "index_data.js", "window.FEATURES = " + json.dumps(rows, ensure_ascii=True, separators=(",", ":")) + ";\n")
    _write(out / "index.html", _index_page(title, meta))
    if data.vision and (data.dir / "images").is_dir():
        shutil.copytree(data.dir / "images", out / "images", dirs_exist_ok=True)
    if coords is None:
        from evals.geometry import feature_map
        from saes.storage import load_sae

        coords = feature_map(load_sae(meta["sae_dir"]).W_dec.detach(), method=map_method)
    _write(out / "map.html", _map_page(title, data, coords, rows, colour=colour, method=map_method))
    n = data.num_features
    for f in tqdm(range(n), desc="feature pages", unit="page", disable=not progress):
        nav = ('<nav class="top"><a href="../index.html">index</a><a href="../map.html">map</a>'
               + (f'<a href="{page_name(f - 1)}">&larr; #{f - 1}</a>' if f > 0 else "")
               + (f'<a href="{page_name(f + 1)}">#{f + 1} &rarr;</a>' if f + 1 < n else "") + "</nav>")
        body = feature_html(data, f, link=page_name, images=lambda i: f"../images/{i}.png")
        _write(out / "features" / page_name(f), _head(f"Feature {f} - {title}", "../style.css") + nav + body + "</body></html>\n")
    _swap(out, final)
    return final / "index.html"


def _swap(new: Path, final: Path) -> None:
    """Put the finished site at `final`: a kill before this leaves the old site (or none), never half."""
    old = None
    if final.exists():
        if final.is_dir() and not (final / "index.html").is_file() and any(final.iterdir()):
            shutil.rmtree(new)
            raise WorkbenchError(f"{str(final)!r} exists and is not a feature browser; choose another --out")
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _index_page(title: str, meta: dict) -> str:
    return (_head(title, "style.css")
            + f'<nav class="top"><b>{esc(title)}</b> <a href="map.html">feature map</a></nav>'
            f'<p class="muted">{int(meta["num_features"]):,} features, dashboards over {int(meta["tokens"]):,} tokens of '
            f'{esc(Path(meta["cache"]).name)}.</p>'
            '<form id="search" class="search"><input id="q" type="text" placeholder="token, or #feature id" '
            'aria-label="search"><select id="by"><option value="any">activating or logit tokens</option>'
            '<option value="act">activating tokens</option><option value="logit">logit-lens tokens</option></select>'
            '<label>log10 density from <input id="dmin" type="number" step="any"> to '
            '<input id="dmax" type="number" step="any"></label><select id="sort"><option value="id">by id</option>'
            '<option value="density">densest first</option><option value="rare">rarest first</option>'
            '<option value="max">largest activation first</option></select></form>'
            '<p id="count" class="muted">loading (this index needs JavaScript; feature pages do not)</p>'
            '<table class="features"><thead><tr><th>feature</th><th>density</th><th>max</th><th>top tokens</th>'
            '<th>logit lens</th></tr></thead><tbody id="rows"></tbody></table>'
            '<p id="pager"><button id="prev" type="button">previous</button><button id="next" type="button">next</button></p>'
            '<script src="index_data.js"></script><script src="app.js"></script></body></html>\n')


MAP_TEXT = {"umap": "a UMAP of the decoder directions (cosine distance)",
            "spectral": "a spectral embedding of the decoder directions' nearest-neighbour graph"}


def map_colour_values(data: FeatureData, colour: str) -> tuple[np.ndarray, str]:
    """Per-feature values the map is coloured by, and their label (density is shown as log10)."""
    t = data.tensors
    choices = sorted(k for k, v in t.items() if v.dim() == 1 and v.shape[0] == data.num_features)
    if colour not in choices:
        raise WorkbenchError(f"cannot colour the map by {colour!r}; valid choices: {', '.join(choices)}")
    v = t[colour].double().numpy()
    if colour == "density":
        return np.log10(np.maximum(v, 1e-7)), "log10 density"
    return v, colour


def _map_page(title: str, data: FeatureData, coords: np.ndarray, rows: list[list], colour: str = "density",
              method: str = "umap") -> str:
    """An SVG scatter of all features; colour = a statistic (log10 density by default); the map's clusters
    outlined; features that absorb first-letter words ringed; each point links to its page."""
    from evals.features.html import absorption_of
    from evals.geometry.decoder import cluster_outlines, map_clusters

    w, h, pad = 900, 700, 12
    vals, label = map_colour_values(data, colour)
    lo, hi = float(vals.min()), float(vals.max())
    absorbing = {int(f) for f in (absorption_of(data).get("absorbing_features") or {})}
    sx = lambda x: pad + x * (w - 2 * pad)  # noqa: E731
    sy = lambda y: pad + y * (h - 2 * pad)  # noqa: E731
    coords = np.asarray(coords, dtype=np.float64)
    outlines = cluster_outlines(coords, map_clusters(coords)) if len(coords) else {}
    polys = "".join(f'<polygon class="cluster" points="{" ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)}" '
                    f'fill="none" stroke="#999" stroke-dasharray="4 3"><title>cluster {c}</title></polygon>'
                    for c, pts in outlines.items())
    pts = []
    for f, (x, y) in enumerate(coords):
        c = (vals[f] - lo) / (hi - lo) if hi > lo else 0.5
        color = f"hsl({int(240 - 200 * c)},70%,45%)"
        tip = esc(f"#{f}: " + " \u00b7 ".join(rows[f][3][:3]) + f" ({label} {vals[f]:.3g})"
                  + (" - absorbs first-letter words" if f in absorbing else ""))
        ring = ' stroke="#000" stroke-width="1.5" class="absorbing"' if f in absorbing else ""
        pts.append(f'<a href="features/{page_name(f)}"><circle id="f{f}" cx="{sx(x):.1f}" '
                   f'cy="{sy(y):.1f}" r="3" fill="{color}"{ring}><title>{tip}</title></circle></a>')
    ringed = (f" Ringed in black: the {len(absorbing)} features that absorb first-letter words (sae eval "
              f"--absorption).") if absorbing else ""
    return (_head(f"Map - {title}", "style.css")
            + f'<nav class="top"><a href="index.html">index</a><b>{esc(title)}</b></nav>'
            f'<p class="muted">Each point is a feature, placed by {MAP_TEXT.get(method, esc(method))} (features that '
            f'point alike sit together); colour: {esc(label)}, blue low ({lo:.3g}) to red high ({hi:.3g}); dashed '
            f'outlines: the {len(outlines)} groups HDBSCAN finds on the map.{ringed} Click a point for its page.</p>'
            f'<svg class="map" width="{w}" height="{h}" viewBox="0 0 {w} {h}">{polys}{"".join(pts)}</svg></body></html>\n')
