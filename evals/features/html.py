"""HTML fragments of a feature's dashboard, shared by notebook cards and the static browser.

Every string that comes from the model or the corpus (token text, corpus ids) passes through
`esc` before it reaches markup: a token `<script>` is shown as text, never parsed. Nothing here
emits script; pages stay readable with JavaScript off.
"""

from __future__ import annotations

import html
from typing import Callable

from evals.features.store import FeatureData

Link = Callable[[int], str | None]

CSS = """
.fc{font:13px/1.45 system-ui,sans-serif;color:#222;max-width:1100px}
.fc h2{font-size:18px;margin:4px 0}.fc h3{font-size:14px;margin:14px 0 4px}
.fc .stats span{margin-right:14px}.fc .muted{color:#777}
.fc .ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:1px 0;padding:1px 4px;border-bottom:1px solid #f2f2f2}
.fc .ctx span{border-radius:2px}.fc .c{outline:1.5px solid #c40}
.fc .v{display:inline-block;width:52px;color:#888;text-align:right;margin-right:8px}
.fc table{border-collapse:collapse}.fc td,.fc th{padding:1px 8px;text-align:left}
.fc .cols{display:flex;flex-wrap:wrap;gap:28px}.fc .pos{color:#06a}.fc .neg{color:#b30}
.fc .heat{position:relative;display:inline-block;margin:3px}
.fc .heat img{display:block;width:160px;height:160px;image-rendering:pixelated}
.fc .heat .g{position:absolute;inset:0;display:grid}
.fc .absorb{border-left:4px solid #c40;background:#fff6ee;padding:2px 10px;margin:8px 0}
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def show_token(text: str) -> str:
    """Make whitespace and line breaks visible, then escape."""
    return esc(text.replace("\n", "\u21b5").replace("\t", "\u21e5"))


def token_html(data: FeatureData, t: int) -> str:
    """The escaped, whitespace-visible text of token id `t`, computed once per id."""
    cache = data.__dict__.setdefault("_token_html", {})
    h = cache.get(t)
    if h is None:
        h = cache[t] = show_token(data.token(t))
    return h


def _bg(a: float) -> str:
    return f"background:rgba(255,120,0,{min(max(a, 0.0), 1.0):.2f})"


def context_html(data: FeatureData, tokens: list[int], acts: list[float] | None, scale: float, value: float) -> str:
    """One context line: its tokens, each shaded by the feature's activation; the centre outlined."""
    mid = len(tokens) // 2
    parts = [f'<div class="ctx"><span class="v">{value:.3g}</span>']
    for j, t in enumerate(tokens):
        if t < 0:
            continue
        a = acts[j] if acts is not None else (value if j == mid else 0.0)
        text = token_html(data, t)
        if a <= 0 and j != mid:  # plain text: most of a context, and most of a page's bytes
            parts.append(text)
            continue
        cls = ' class="c"' if j == mid else ""
        style = f' style="{_bg(a / scale)}"' if a > 0 and scale > 0 else ""
        parts.append(f'<span{cls}{style} title="{a:.3g}">{text}</span>')
    parts.append("</div>")
    return "".join(parts)


def histogram_svg(counts: list[int], lo: float, width: float, label: str, w: int = 320, h: int = 90) -> str:
    """Bars of `counts` over bins of `width` starting at `lo`, with the axis ends labelled."""
    n = len(counts)
    top = max(max(counts), 1)
    bw = w / max(n, 1)
    bars = "".join(
        f'<rect x="{i * bw:.0f}" y="{h - 14 - (c / top) * (h - 20):.0f}" width="{max(bw - 1, 1):.0f}" '
        f'height="{(c / top) * (h - 20):.0f}"/>' for i, c in enumerate(counts) if c > 0)
    return (f'<svg class="hist" width="{w}" height="{h}" role="img" aria-label="{esc(label)}"><g fill="#e80">{bars}</g>'
            f'<text x="0" y="{h - 2}" font-size="10">{lo:.3g}</text>'
            f'<text x="{w}" y="{h - 2}" font-size="10" text-anchor="end">{lo + n * width:.3g}</text></svg>')


def _feature_list(items: list[tuple[int, float]], link: Link, data: FeatureData) -> str:
    rows = []
    for g, v in items:
        if g < 0 or v != v:
            continue
        href = link(g)
        name = f'<a href="{esc(href)}">#{g}</a>' if href else f"#{g}"
        rows.append(f"<tr><td>{name}</td><td>{v:.3f}</td><td class=muted>{esc(', '.join(data.top_tokens(g, 3)))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>" if rows else '<p class="muted">none</p>'


def feature_html(data: FeatureData, f: int, link: Link = lambda g: None, images: Callable[[int], str | None] | None = None) -> str:
    """The whole dashboard of feature `f` as one `<div class="fc">` fragment."""
    L = data.lists
    density, mx, mean, nnz = L("density")[f], L("max")[f], L("mean")[f], L("nnz")[f]
    out = [f'<div class="fc"><h2>Feature {f}</h2><div class="stats"><span>density {density:.3e}</span>'
           f"<span>max {mx:.3g}</span><span>mean {mean:.3g}</span><span>fires on {nnz:,} of "
           f"{int(data.meta['tokens']):,} tokens</span></div>"]
    if nnz == 0:
        out.append('<p class="muted">This feature never fired on the cache (dead).</p>')
    top = data.top_tokens(f, 8)
    if top:
        out.append(f'<p>Top tokens: {", ".join(f"<b>{show_token(s)}</b>" for s in top)}</p>')
    out.append(absorption_html(data, f))
    out.append('<div class="cols">')
    if data.has("logit_top_ids"):
        def lens(ids: list[int], vals: list[float], cls: str) -> str:
            return "<table>" + "".join(f'<tr><td class="{cls}">{token_html(data, i)}</td><td>{v:+.3f}</td></tr>'
                                       for i, v in zip(ids, vals)) + "</table>"
        lo, hi = L("logit_lo")[f], L("logit_hi")[f]
        hist = L("logit_hist")[f]
        out.append(f'<div><h3>Logit lens: promoted</h3>{lens(L("logit_top_ids")[f], L("logit_top_vals")[f], "pos")}</div>'
                   f'<div><h3>Logit lens: suppressed</h3>{lens(L("logit_bot_ids")[f], L("logit_bot_vals")[f], "neg")}</div>'
                   f'<div><h3>Logit lens over the vocabulary (final-norm gain folded into W_U)</h3>{histogram_svg(hist, lo, (hi - lo) / len(hist), "logit histogram")}</div>')
    out.append(f'<div><h3>Activations (non-zero)</h3>'
               f'{histogram_svg(L("hist")[f], 0.0, L("hist_width")[f], "activation histogram")}</div>')
    out.append(f'<div><h3>Correlated features</h3>{_feature_list(list(zip(L("corr_ids")[f], L("corr_vals")[f])), link, data)}</div>'
               f'<div><h3>Nearest decoder directions</h3>{_feature_list(list(zip(L("near_ids")[f], L("near_vals")[f])), link, data)}</div>')
    out.append("</div>")
    if data.vision:
        out.append(_vision_html(data, f, images))
    else:
        out.append(_contexts_html(data, f, mx))
    out.append("</div>")
    return "".join(out)


def absorption_of(data: FeatureData) -> dict:
    """The absorption section of the SAE's eval.json (`sae eval --absorption`), {} when it has none; read once."""
    if "_absorption" not in data.__dict__:
        import json
        from pathlib import Path

        found: dict = {}
        p = Path(str(data.meta.get("sae_dir") or "")) / "eval.json"
        if data.meta.get("sae_dir") and p.is_file():
            try:
                found = json.loads(p.read_text()).get("absorption") or {}
            except (OSError, ValueError):
                found = {}
        data.__dict__["_absorption"] = found
    return data.__dict__["_absorption"]


def absorption_html(data: FeatureData, f: int, max_tokens: int = 30) -> str:
    """A marked box when feature `f` absorbs first-letter words or is a letter's main feature; '' otherwise."""
    a = absorption_of(data)
    rows = (a.get("absorbing_features") or {}).get(str(f), [])
    mains = [c for c, r in (a.get("letters") or {}).items() if f in r.get("main_features", [])]
    if not rows and not mains:
        return ""
    out = ['<div class="absorb"><h3>First-letter absorption</h3>']
    if mains:
        out.append(f"<p>Main feature of the letter{'s' if len(mains) > 1 else ''} "
                   f"{', '.join(f'<b>{esc(c.upper())}</b>' for c in mains)} (k-sparse probing).</p>")
    for r in rows:
        toks = r["tokens"]
        shown = ", ".join(f"<b>{show_token(t)}</b>" for t in toks[:max_tokens])
        more = f" and {len(toks) - max_tokens} more" if len(toks) > max_tokens else ""
        out.append(f'<p class="absorbing">Absorbs <b>{esc(r["letter"].upper())}</b>: where the letter\'s main '
                   f"features are silent on {len(toks)} word{'s' if len(toks) != 1 else ''} "
                   f"({100 * r['rate']:.1f}% of the probe's {esc(r['letter'].upper())} words), this feature carries "
                   f"the letter instead: {shown}{more}</p>")
    out.append("</div>")
    return "".join(out)


def _contexts_html(data: FeatureData, f: int, mx: float) -> str:
    L = data.lists
    out = ["<h3>Top activations</h3>"]
    toks, acts = L("top_tok")[f], L("top_act")[f]
    for j, v in enumerate(L("top_val")[f]):
        if v == float("-inf"):
            break
        out.append(context_html(data, toks[j], acts[j], mx, v))
    counts = L("int_counts")[f]
    total = max(sum(counts), 1)
    edges = L("int_edges")[f]
    rows, itok, ivals = L("int_rows")[f], L("int_tok")[f], L("int_vals")[f]
    for i in range(len(counts) - 1, -1, -1):
        c = counts[i]
        if c == 0:
            continue
        out.append(f"<h3>Interval {edges[i]:.3g} to {edges[i + 1]:.3g} <span class=muted>({100 * c / total:.2f}% of "
                   f"activations, {c:,})</span></h3>")
        for j, row in enumerate(rows[i]):
            if row < 0:
                continue
            out.append(context_html(data, itok[i][j], None, mx, ivals[i][j]))
    return "".join(out)


def _vision_html(data: FeatureData, f: int, images: Callable[[int], str | None] | None) -> str:
    """Top images with the feature's activation on each patch as a heat map over the image."""
    t = data.tensors
    out = ["<h3>Top images</h3><div>"]
    heat = t["top_heat"][f]
    mx = max(float(heat.max()), 1e-12)
    p = heat.shape[1]
    first = 1 if int(round((p - 1) ** 0.5)) ** 2 == p - 1 else 0  # CLS first, then a square of patches
    side = int(round((p - first) ** 0.5))
    for j, (img, v) in enumerate(zip(t["top_image"][f].tolist(), t["top_val"][f].tolist())):
        if img < 0:
            continue
        src = images(img) if images else None
        cells = "".join(f'<div style="{_bg(0.85 * a / mx)}"></div>' for a in heat[j, first:first + side * side].tolist())
        pic = f'<img src="{esc(src)}" alt="image {img}">' if src else '<div style="width:160px;height:160px;background:#ddd"></div>'
        out.append(f'<div class="heat" title="image {img}: max {v:.3g}">{pic}<div class="g" '
                   f'style="grid-template-columns:repeat({side},1fr)">{cells}</div></div>')
    out.append("</div>")
    return "".join(out)
