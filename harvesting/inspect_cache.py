"""`sae cache info` and `sae cache verify`: what a cache holds, and whether every byte is intact."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvesting.cache import MANIFEST, read_manifest
from workbench.io import sha256_file

_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32", "I16": "int16"}


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


def _header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header, read without loading any tensor."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError("bad header length")
        raw = f.read(n)
        if len(raw) != n:
            raise ValueError("file ends inside its header")
    return json.loads(raw)


def verify_cache(path: str | Path) -> VerifyReport:
    """Check every shard file the manifest lists: present, size, checksum, shapes, dtypes, row counts.

    Each problem names the shard and file, so a user knows what to re-harvest.
    """
    path = Path(path)
    m = read_manifest(path)
    rep = VerifyReport(str(path))
    if m["status"] != "complete":
        rep.problems.append(f"{MANIFEST}: status is {m['status']!r}, not 'complete' (the harvest was interrupted; rerun it)")
    expected_row = 0
    for s in m["shards"]:
        n = s["rows"][1] - s["rows"][0]
        if s["rows"][0] != expected_row:
            rep.problems.append(f"shard {s['index']}: rows start at {s['rows'][0]}, expected {expected_row}")
        expected_row = s["rows"][1]
        for key, info in s["files"].items():
            rep.files_checked += 1
            f = path / info["file"]
            where = f"shard {s['index']} ({info['file']})"
            if not f.is_file():
                rep.problems.append(f"{where}: missing")
                continue
            size = f.stat().st_size
            if size != info["bytes"]:
                rep.problems.append(f"{where}: {size} bytes on disk, manifest says {info['bytes']} (truncated or overwritten)")
                continue
            digest = sha256_file(f)
            if digest != info["sha256"]:
                rep.problems.append(f"{where}: checksum mismatch (sha256 {digest[:12]}..., manifest {info['sha256'][:12]}...)")
                continue
            try:
                header = _header(f)
            except (ValueError, json.JSONDecodeError) as e:
                rep.problems.append(f"{where}: unreadable safetensors header ({e})")
                continue
            for name, shape in info["shapes"].items():
                h = header.get(name)
                if h is None:
                    rep.problems.append(f"{where}: tensor {name!r} missing")
                    continue
                if h["shape"] != shape or h["shape"][0] != n:
                    rep.problems.append(f"{where}: tensor {name!r} has shape {h['shape']}, expected {shape} with {n} rows")
                dt = _ST_DTYPES.get(h["dtype"], h["dtype"])
                if dt != info["dtypes"][name]:
                    rep.problems.append(f"{where}: tensor {name!r} has dtype {dt}, expected {info['dtypes'][name]}")
            if key in m["hooks"]:
                want = m["hooks"][key]
                got = info["shapes"].get("acts", [0, 0])
                if got[1] != want["d_model"] or info["dtypes"].get("acts") != want["dtype"]:
                    rep.problems.append(f"{where}: acts {got} {info['dtypes'].get('acts')} do not match hook "
                                        f"{key} (d_model {want['d_model']}, {want['dtype']})")
    return rep
