"""HTML fragments of a feature's dashboard, shared by notebook cards and the static browser.

Every string that comes from the model or the corpus (token text, corpus ids) passes through
`esc` before it reaches markup: a token `<script>` is shown as text, never parsed. Nothing here
emits script; pages stay readable with JavaScript off.
"""

from __future__ import annotations

import html
from typing import Callable

import torch

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
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def show_token(text: str) -> str:
    """Make whitespace and line breaks visible, then escape."""
    return esc(text.replace("\n", "\u21b5").replace("\t", "\u21e5"))


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
        text = show_token(data.token(t))
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
    t = data.tensors
    density, mx, mean = float(t["density"][f]), float(t["max"][f]), float(t["mean"][f])
    out = [f'<div class="fc"><h2>Feature {f}</h2><div class="stats"><span>density {density:.3e}</span>'
           f"<span>max {mx:.3g}</span><span>mean {mean:.3g}</span><span>fires on {int(t['nnz'][f]):,} of "
           f"{int(data.meta['tokens']):,} tokens</span></div>"]
    if int(t["nnz"][f]) == 0:
        out.append('<p class="muted">This feature never fired on the cache (dead).</p>')
    top = data.top_tokens(f, 8)
    if top:
        out.append(f'<p>Top tokens: {", ".join(f"<b>{show_token(s)}</b>" for s in top)}</p>')
    out.append('<div class="cols">')
    if data.has("logit_top_ids"):
        def lens(ids: torch.Tensor, vals: torch.Tensor, cls: str) -> str:
            return "<table>" + "".join(f'<tr><td class="{cls}">{show_token(data.token(i))}</td><td>{v:+.3f}</td></tr>'
                                       for i, v in zip(ids.tolist(), vals.tolist())) + "</table>"
        lo, hi = float(t["logit_lo"][f]), float(t["logit_hi"][f])
        nb = t["logit_hist"].shape[1]
        out.append(f'<div><h3>Logit lens: promoted</h3>{lens(t["logit_top_ids"][f], t["logit_top_vals"][f], "pos")}</div>'
                   f'<div><h3>Logit lens: suppressed</h3>{lens(t["logit_bot_ids"][f], t["logit_bot_vals"][f], "neg")}</div>'
                   f'<div><h3>Logits of W_dec[f] @ W_U</h3>{histogram_svg(t["logit_hist"][f].tolist(), lo, (hi - lo) / nb, "logit histogram")}</div>')
    out.append(f'<div><h3>Activations (non-zero)</h3>'
               f'{histogram_svg(t["hist"][f].tolist(), 0.0, float(t["hist_width"][f]), "activation histogram")}</div>')
    out.append(f'<div><h3>Correlated features</h3>{_feature_list(list(zip(t["corr_ids"][f].tolist(), t["corr_vals"][f].tolist())), link, data)}</div>'
               f'<div><h3>Nearest decoder directions</h3>{_feature_list(list(zip(t["near_ids"][f].tolist(), t["near_vals"][f].tolist())), link, data)}</div>')
    out.append("</div>")
    if data.vision:
        out.append(_vision_html(data, f, images))
    else:
        out.append(_contexts_html(data, f, mx))
    out.append("</div>")
    return "".join(out)


def _contexts_html(data: FeatureData, f: int, mx: float) -> str:
    t = data.tensors
    out = ["<h3>Top activations</h3>"]
    for j, v in enumerate(t["top_val"][f].tolist()):
        if v == float("-inf"):
            break
        out.append(context_html(data, t["top_tok"][f, j].tolist(), t["top_act"][f, j].tolist(), mx, v))
    counts = t["int_counts"][f]
    total = max(int(counts.sum()), 1)
    edges = t["int_edges"][f].tolist()
    for i in range(counts.numel() - 1, -1, -1):
        c = int(counts[i])
        if c == 0:
            continue
        out.append(f"<h3>Interval {edges[i]:.3g} to {edges[i + 1]:.3g} <span class=muted>({100 * c / total:.2f}% of "
                   f"activations, {c:,})</span></h3>")
        for j, row in enumerate(t["int_rows"][f, i].tolist()):
            if row < 0:
                continue
            out.append(context_html(data, t["int_tok"][f, i, j].tolist(), None, mx, float(t["int_vals"][f, i, j])))
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
