"""The saved feature data (`<sae>/features/`): safetensors + JSON, read back without a model.

    features.safetensors   per-feature tensors (density, top contexts, intervals, histograms, lens, ...)
    features.json          what was built from what (SAE, cache, hook, config) and token strings
    cooccurrence.safetensors  chunk co-occurrence counts of the tracked features (geometry)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from workbench.errors import WorkbenchError

DATA_FILE = "features.safetensors"
META_FILE = "features.json"
COOC_FILE = "cooccurrence.safetensors"


class FeatureData:
    """All features' dashboard data, loaded once; `tensors[name][f]` is feature f's part."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        if not (self.dir / META_FILE).is_file() or not (self.dir / DATA_FILE).is_file():
            raise WorkbenchError(f"no feature data at {str(self.dir)!r}; build it with build_features() or `sae browse`")
        self.meta: dict[str, Any] = json.loads((self.dir / META_FILE).read_text())
        self.tensors: dict[str, Tensor] = load_file(str(self.dir / DATA_FILE))
        self.vocab: dict[str, str] = self.meta.get("vocab", {})
        self._top: dict[tuple[int, int], list[str]] = {}
        self._lists: dict[str, list] = {}

    @property
    def num_features(self) -> int:
        return int(self.meta["num_features"])

    @property
    def vision(self) -> bool:
        return self.meta.get("modality") == "vision"

    def token(self, i: int) -> str:
        return self.vocab.get(str(int(i)), f"<{int(i)}>")

    def lists(self, name: str) -> list:
        """`tensors[name]` as nested Python lists, converted once (rendering thousands of pages
        indexes lists far faster than it slices tensors)."""
        if name not in self._lists:
            self._lists[name] = self.tensors[name].tolist()
        return self._lists[name]

    def has(self, name: str) -> bool:
        return name in self.tensors

    def cooccurrence(self) -> dict[str, Tensor]:
        p = self.dir / COOC_FILE
        return load_file(str(p)) if p.is_file() else {}

    def top_tokens(self, f: int, n: int = 5) -> list[str]:
        """The distinct tokens on which feature f fires hardest (its most common reading)."""
        if self.vision:
            return []
        if (f, n) in self._top:
            return self._top[(f, n)]
        k = self.tensors["top_tok"].shape[2] // 2
        seen: list[str] = []
        for win, v in zip(self.lists("top_tok")[f], self.lists("top_val")[f]):
            t = win[k]
            if t >= 0 and v > float("-inf"):
                s = self.token(t)
                if s not in seen:
                    seen.append(s)
            if len(seen) >= n:
                break
        self._top[(f, n)] = seen
        return seen

    def logit_tokens(self, f: int, n: int = 5) -> list[str]:
        if not self.has("logit_top_ids"):
            return []
        return [self.token(i) for i in self.lists("logit_top_ids")[f][:n]]

    def check_feature(self, f: int) -> int:
        if not isinstance(f, (int,)) and not (isinstance(f, Tensor) and f.dim() == 0):
            raise WorkbenchError(f"a feature index is an int; got {f!r}")
        f = int(f)
        if not 0 <= f < self.num_features:
            raise WorkbenchError(f"feature {f} does not exist; valid: 0..{self.num_features - 1}")
        return f

