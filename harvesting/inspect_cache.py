"""`sae cache info` and `sae cache verify`: what a cache holds, and whether every byte is intact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvesting.cache import MANIFEST, hooks_problem, load_manifest_json, read_manifest, version_problem
from harvesting.integrity import cache_problems

def cache_summary(path: str | Path) -> dict[str, Any]:
    """The facts a person wants first about a cache, as a dict (also what `sae cache info` prints)."""
    path = Path(path)
    m = read_manifest(path)
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    totals = m.get("totals", {})
    return {
        "path": str(path),
        "status": m["status"],
        "model": m["model"]["id"],
        "modality": m["model"].get("modality", "text"),
        "corpus": m.get("corpus", {}).get("id"),
        "hooks": {h: {"d_model": v["d_model"], "dtype": v["dtype"], **totals.get("norms", {}).get(h, {})}
                  for h, v in m["hooks"].items()},
        "tokens": totals.get("rows", 0),
        "contexts": totals.get("contexts", 0),
        "context_length": m.get("context_length"),
        "shards": len(m["shards"]),
        "bytes": size,
    }


def format_summary(s: dict[str, Any]) -> str:
    unit = "patches" if s["modality"] == "vision" else "tokens"
    lines = [
        f"cache      {s['path']}  ({s['status']})",
        f"model      {s['model']}  ({s['modality']})",
        f"corpus     {s['corpus']}",
        f"{unit:<10} {s['tokens']:,} in {s['contexts']:,} contexts of {s['context_length']}, {s['shards']} shard(s)",
        f"on disk    {s['bytes'] / 2**20:,.1f} MiB",
        f"{'hook point':<34} {'d_model':>7} {'dtype':>9} {'mean norm':>10} {'rms norm':>9} {'norm scale':>10}",
    ]
    for h, v in s["hooks"].items():
        lines.append(f"{h:<34} {v['d_model']:>7} {v['dtype']:>9} {v.get('mean_norm', 0):>10.3f} "
                     f"{v.get('rms_norm', 0):>9.3f} {v.get('norm_scale', 1):>10.4f}")
    return "\n".join(lines)


@dataclass
class VerifyReport:
    path: str
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _totals_problems(m: dict[str, Any]) -> list[str]:
    """Totals the manifest states that its shard entries do not add up to."""
    shards, totals = m["shards"], m.get("totals")
    if not isinstance(totals, dict):
        return [f"{MANIFEST}: no totals"]
    problems = []
    rows = sum(s["rows"][1] - s["rows"][0] for s in shards)
    contexts = shards[-1]["contexts"][1] if shards else 0
    if totals.get("rows") != rows:
        problems.append(f"{MANIFEST}: totals say {totals.get('rows')} rows, the shards hold {rows}")
    if totals.get("contexts") != contexts:
        problems.append(f"{MANIFEST}: totals say {totals.get('contexts')} contexts, the shards hold {contexts}")
    for h in m["hooks"]:
        stated = totals.get("norms", {}).get(h, {}).get("mean_norm")
        try:
            mean = sum(s["norms"][h]["sum"] for s in shards) / rows if rows else 0.0
        except (KeyError, TypeError):
            problems.append(f"{MANIFEST}: a shard entry lacks the norms of hook {h}")
            continue
        if not isinstance(stated, (int, float)) or abs(stated - mean) > 1e-6 * max(1.0, abs(mean)):
            problems.append(f"{MANIFEST}: totals give hook {h} mean norm {stated}, the shards {mean:.6g}")
    return problems


def verify_cache(path: str | Path) -> VerifyReport:
    """Check every shard file the manifest lists: a plain file inside the cache, present, size,
    checksum, header, shapes, dtypes, row counts; each shard has every hook's file; totals agree.

    Each problem names the shard and file, so a user knows what to re-harvest. A manifest from
    another format version, or with hook points in a dtype this workbench cannot read, is one
    problem (nothing else is read). Half caches verify like float32 ones: the checksums are of
    the bytes on disk, whatever they encode.
    """
    path = Path(path)
    m = load_manifest_json(path)
    rep = VerifyReport(str(path))
    unreadable = version_problem(path, m) or hooks_problem(path, m)
    if unreadable:
        rep.problems.append(f"{MANIFEST}: {unreadable}")
        return rep
    if m["status"] != "complete":
        rep.problems.append(f"{MANIFEST}: status is {m['status']!r}, not 'complete' (the harvest was interrupted; rerun it)")
    problems, files = cache_problems(path, m, checksum=True)
    rep.problems += problems
    rep.files_checked = files
    rep.problems += _totals_problems(m)
    return rep
