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
                  coords: np.ndarray | None = None) -> Path:
    """Write the browser for the feature data in `features_dir` into `out`; returns index.html."""
    data = FeatureData(features_dir)
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

        coords = feature_map(load_sae(meta["sae_dir"]).W_dec.detach())
    _write(out / "map.html", _map_page(title, data, coords, rows))
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


def _map_page(title: str, data: FeatureData, coords: np.ndarray, rows: list[list]) -> str:
    """An SVG scatter of all features; colour = log10 density; each point links to its page."""
    w, h, pad = 900, 700, 12
    dens = np.array([r[1] for r in rows])
    ld = np.log10(np.maximum(dens, 1e-7))
    lo, hi = float(ld.min()), float(ld.max())
    pts = []
    for f, (x, y) in enumerate(coords):
        c = (ld[f] - lo) / (hi - lo) if hi > lo else 0.5
        color = f"hsl({int(240 - 200 * c)},70%,45%)"
        label = esc(f"#{f}: " + " \u00b7 ".join(rows[f][3][:3]))
        pts.append(f'<a href="features/{page_name(f)}"><circle id="f{f}" cx="{pad + x * (w - 2 * pad):.1f}" '
                   f'cy="{pad + y * (h - 2 * pad):.1f}" r="3" fill="{color}"><title>{label}</title></circle></a>')
    return (_head(f"Map - {title}", "style.css")
            + f'<nav class="top"><a href="index.html">index</a><b>{esc(title)}</b></nav>'
            '<p class="muted">Each point is a feature, placed by a spectral embedding of its decoder direction\'s '
            'nearest neighbours (features that point alike sit together); colour: log10 density, blue rare to red '
            'dense. Click a point for its page.</p>'
            f'<svg class="map" width="{w}" height="{h}" viewBox="0 0 {w} {h}">{"".join(pts)}</svg></body></html>\n')
