"""Notebook objects that render themselves: `features(sae)[1234]`, `SAESummary`, `ComparisonTable`.

    fs = features("cache/quickstart/saes")      # builds the dashboards once (or loads them)
    fs[1234]                                     # FeatureCard: the same dashboard the browser shows
    fs.search("Paris")                           # features whose top tokens or logit lens match
    fs.summary()                                 # SAESummary: facts, density histogram, dead count
    ComparisonTable([fs_a, fs_b])                # several SAEs side by side
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evals.features.html import CSS, esc, feature_html, histogram_svg
from evals.features.store import FeatureData
from evals.features.summary import facts_table_html, sae_facts
from workbench.errors import WorkbenchError


class FeatureCard:
    """One feature's dashboard; `_repr_html_` renders it in Jupyter, `repr` gives a text line."""

    def __init__(self, data: FeatureData, feature: int) -> None:
        self.data = data
        self.feature = data.check_feature(feature)

    @property
    def density(self) -> float:
        return float(self.data.tensors["density"][self.feature])

    @property
    def max_activation(self) -> float:
        return float(self.data.tensors["max"][self.feature])

    @property
    def top_tokens(self) -> list[str]:
        return self.data.top_tokens(self.feature, 10)

    @property
    def logit_tokens(self) -> list[str]:
        return self.data.logit_tokens(self.feature, 10)

    def contexts(self, n: int = 5) -> list[str]:
        """Plain text of the top contexts, the activating token in [[ ]]."""
        t = self.data.tensors
        if self.data.vision:
            return []
        mid = t["top_tok"].shape[2] // 2
        out = []
        for j in range(min(n, t["top_tok"].shape[1])):
            if t["top_val"][self.feature, j] == float("-inf"):
                break
            toks = t["top_tok"][self.feature, j].tolist()
            out.append("".join(f"[[{self.data.token(x)}]]" if i == mid else self.data.token(x)
                               for i, x in enumerate(toks) if x >= 0))
        return out

    def _image(self, image_id: int) -> str | None:
        p = self.data.dir / "images" / f"{image_id}.png"
        return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() if p.is_file() else None

    def _repr_html_(self) -> str:
        return f"<style>{CSS}</style>" + feature_html(self.data, self.feature, images=self._image)

    def __repr__(self) -> str:
        return (f"FeatureCard(feature={self.feature}, density={self.density:.3e}, max={self.max_activation:.3g}, "
                f"top_tokens={self.top_tokens[:5]}, logit_lens={self.logit_tokens[:5]})")


class SAESummary:
    """An SAE at a glance: its facts, the density histogram of its features, dead and dense counts."""

    def __init__(self, data: FeatureData, sae: Any = None) -> None:
        self.data = data
        self.sae = sae

    def facts(self) -> dict[str, Any]:
        d = self.data
        dens = d.tensors["density"]
        facts: dict[str, Any] = {}
        if self.sae is not None:
            facts.update(sae_facts(self.sae, d.meta.get("sae_dir")))
        facts.update({
            "features": d.num_features, "tokens in the pass": int(d.meta["tokens"]),
            "dead (never fired)": int((dens == 0).sum()), "dense (> 10% of tokens)": int((dens > 0.1).sum()),
            "median density": float(dens.median()), "mean L0": float(dens.sum()),
        })
        return facts

    def density_histogram(self, bins: int = 30) -> tuple[list[int], float, float]:
        dens = self.data.tensors["density"]
        ld = torch.log10(dens[dens > 0]).numpy()
        if ld.size == 0:
            return [0] * bins, -7.0, 0.0
        lo, hi = float(ld.min()), float(ld.max()) + 1e-9
        counts, _ = np.histogram(ld, bins=bins, range=(lo, hi))
        return counts.tolist(), lo, (hi - lo) / bins

    def _repr_html_(self) -> str:
        counts, lo, width = self.density_histogram()
        return (f"<style>{CSS}</style><div class='fc'><h2>{esc(Path(self.data.meta['sae_dir']).name)}</h2>"
                f"{facts_table_html(self.facts())}<h3>log10 feature density</h3>"
                f"{histogram_svg(counts, lo, width, 'log10 density histogram', w=420)}</div>")

    def __repr__(self) -> str:
        return "SAESummary(" + ", ".join(f"{k}={v}" for k, v in self.facts().items()) + ")"


class ComparisonTable:
    """Several SAEs (their FeatureSets) side by side: sizes, rule, dead/dense counts, density."""

    def __init__(self, sets: list["FeatureSet"], names: list[str] | None = None) -> None:
        self.sets = sets
        self.names = names or [Path(s.data.meta["sae_dir"]).name for s in sets]

    def rows(self) -> list[dict[str, Any]]:
        return [{"name": n, **s.summary().facts()} for n, s in zip(self.names, self.sets)]

    def _repr_html_(self) -> str:
        rows = self.rows()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{esc(k)}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{esc(_cell(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in rows)
        return f"<style>{CSS}</style><div class='fc'><table><tr>{head}</tr>{body}</table></div>"

    def __repr__(self) -> str:
        return "\n".join(" | ".join(f"{k}={_cell(v)}" for k, v in r.items()) for r in self.rows())


def _cell(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))


class FeatureSet:
    """All features of one SAE; index it for a `FeatureCard`."""

    def __init__(self, data: FeatureData, sae: Any = None) -> None:
        self.data = data
        self.sae = sae

    def __len__(self) -> int:
        return self.data.num_features

    def __getitem__(self, feature: int) -> FeatureCard:
        return FeatureCard(self.data, feature)

    def search(self, token: str, by: str = "any", limit: int = 20) -> list[int]:
        """Features whose top activating tokens (`act`), logit-lens tokens (`logit`) or either contain `token`."""
        if by not in ("any", "act", "logit"):
            raise WorkbenchError(f"unknown search field {by!r}; valid choices: any, act, logit")
        q = token.strip().lower()
        hits = []
        for f in range(len(self)):
            pool = (self.data.top_tokens(f, 5) if by != "logit" else []) + (self.data.logit_tokens(f, 5) if by != "act" else [])
            if any(q in s.strip().lower() for s in pool):
                hits.append(f)
                if len(hits) >= limit:
                    break
        return hits

    def summary(self) -> SAESummary:
        return SAESummary(self.data, self.sae)

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    def __repr__(self) -> str:
        return f"FeatureSet({len(self)} features of {self.data.meta['sae_dir']})"


def features(sae: Any, cache: str | Path | None = None, out: str | Path | None = None, **build_kw: Any) -> FeatureSet:
    """The obvious way in: `features(sae)[1234]`.

    `sae`: an SAE directory (or run directory), or a loaded SAE. The dashboards are built once in
    one pass over `cache` (default: the cache the SAE was trained on) and saved next to the SAE;
    later calls load them. A loaded SAE without a known directory needs `out`.
    """
    from evals.features.build import build_features
    from saes.storage import resolve_sae_dir
    from saes.storage import load_sae

    if isinstance(sae, (str, Path)):
        sae_dir = resolve_sae_dir(sae)
        model = load_sae(sae_dir)
    else:
        model = sae
        d = getattr(sae, "directory", None)
        if d is None and out is None:
            raise WorkbenchError("this SAE object does not know its directory; pass the SAE directory instead, or out=")
        sae_dir = resolve_sae_dir(d) if d is not None else None
    target = Path(out) if out is not None else sae_dir / "features"
    cache = cache or (model.cfg.train or {}).get("cache")
    if cache is None:
        return FeatureSet(FeatureData(target), model)
    if sae_dir is None:
        raise WorkbenchError("building feature data needs the SAE's directory (its saved weights); pass it instead")
    return FeatureSet(FeatureData(build_features(sae_dir, cache, target, **build_kw)), model)
