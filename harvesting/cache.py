"""The activation cache on disk: manifest, shard files and the writer.

Layout of one cache directory::

    manifest.json                       format version, model, hooks, corpus, shards (+ checksums)
    shard_00000.rows.safetensors        per-row ids: token_ids, doc_ids, context_ids, positions
                                        (vision: image_ids, patch_ids, context_ids, positions)
    shard_00000.<hook>.safetensors      tensor "acts" [rows, d_model] for that hook point

Only rows a SAE should train on are stored: positions the harvest excludes (BOS, CLS/SEP,
padding) never reach disk, so a reader needs no masks. Every shard file is written to a
temporary name and renamed, then the manifest (which lists finished shards only) is rewritten
atomically; a killed harvest therefore resumes after the last listed shard, and since shards
always end on a forward-pass boundary the resumed run recomputes exactly the same batches.
No timestamps are stored, so an interrupted-then-resumed cache is byte-identical to an
uninterrupted one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from workbench.errors import WorkbenchError
from workbench.io import atomic_write_bytes, atomic_write_json

FORMAT_NAME = "sae-workbench-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_from_name(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise WorkbenchError(f"unknown cache dtype {name!r}; valid choices: {', '.join(DTYPES)}")
    return DTYPES[name]


def hook_file_name(index: int, hook: str) -> str:
    return f"shard_{index:05d}.{hook}.safetensors"


def rows_file_name(index: int) -> str:
    return f"shard_{index:05d}.rows.safetensors"


def load_manifest_json(path: str | Path) -> dict[str, Any]:
    """A cache's manifest as JSON, checked for being one (not yet for its version)."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        if not path.exists():
            raise WorkbenchError(f"no cache at {str(path)!r}: the directory does not exist")
        raise WorkbenchError(f"{str(path)!r} is not an activation cache: it has no {MANIFEST}")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"{mf} is not valid JSON ({e}); the cache is damaged") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise WorkbenchError(f"{mf} is not a {FORMAT_NAME} manifest (format={fmt!r})")
    return manifest


def version_problem(path: str | Path, manifest: dict[str, Any]) -> str | None:
    """Why this code cannot read a manifest's format version (None when it can)."""
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        return None
    if isinstance(version, int) and version > FORMAT_VERSION:
        return (f"the cache at {str(path)!r} was written by a newer workbench (cache format version {version}); "
                f"this one reads version {FORMAT_VERSION}: upgrade the workbench to read it")
    return (f"the cache at {str(path)!r} was written in cache format version {version!r}; this workbench reads "
            f"version {FORMAT_VERSION} only. Harvest it again with this version (same command, new --out).")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and check a cache's manifest: right format, a version this code reads."""
    manifest = load_manifest_json(path)
    problem = version_problem(path, manifest)
    if problem:
        raise WorkbenchError(problem)
    return manifest


def _disk_full(path: Path, e: OSError, done_shards: int) -> WorkbenchError:
    free = shutil.disk_usage(path).free if path.exists() else 0
    return WorkbenchError(
        f"the disk holding {str(path)!r} is full ({free / 2**20:.1f} MiB free) while writing shard {done_shards}; "
        f"the {done_shards} finished shard(s) are intact. Free some space and run the same command again to resume."
    )


@dataclass
class _Pending:
    acts: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    ids: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    rows: int = 0
    contexts: int = 0


class CacheWriter:
    """Append activation rows and write them as checksummed shards.

    `header` is everything the manifest says about the run (model, corpus, config); `hooks`
    maps hook point -> d_model. A writer opened on a directory holding an unfinished harvest
    with the same header continues it (`resumed_contexts` says where); a different header is an
    error naming the fields that differ, so two harvests never mix in one directory.
    """

    def __init__(
        self,
        path: str | Path,
        hooks: dict[str, int],
        dtype: str = "float32",
        shard_tokens: int = 1 << 16,
        header: dict[str, Any] | None = None,
        row_fields: tuple[str, ...] = ("token_ids", "doc_ids", "context_ids", "positions"),
    ) -> None:
        self.path = Path(path)
        self.dtype_name = dtype
        self.dtype = dtype_from_name(dtype)
        if shard_tokens < 1:
            raise WorkbenchError(f"shard_tokens must be at least 1; got {shard_tokens}")
        self.shard_tokens = shard_tokens
        self.hooks = dict(hooks)
        self.row_fields = tuple(row_fields)
        self.header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "hooks": {h: {"d_model": d, "dtype": dtype} for h, d in self.hooks.items()},
            "row_fields": list(self.row_fields),
            "shard_tokens": shard_tokens,
            **(header or {}),
        }
        self.shards: list[dict[str, Any]] = []
        self.status = "in_progress"
        self._pending = _Pending()
        self._open()

    # -- lifecycle -----------------------------------------------------------------------
    def _open(self) -> None:
        mf = self.path / MANIFEST
        if mf.exists():
            old = read_manifest(self.path)
            diff = sorted(k for k in set(old) | set(self.header) if k not in ("shards", "status", "totals")
                          and json.dumps(old.get(k), sort_keys=True) != json.dumps(self.header.get(k), sort_keys=True))
            if diff:
                details = "; ".join(f"{k}: cache has {old.get(k)!r}, asked {self.header.get(k)!r}" for k in diff[:4])
                raise WorkbenchError(
                    f"{str(self.path)!r} already holds a different harvest ({details}). Use another --out, "
                    f"or delete that directory to start over."
                )
            self.shards = list(old["shards"])
            self.status = old["status"]
            self._remove_orphans()
        else:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WorkbenchError(f"cannot create the cache directory {str(self.path)!r}: {e}") from e
            if any(self.path.iterdir()):
                raise WorkbenchError(
                    f"{str(self.path)!r} exists, is not empty and holds no cache manifest; refusing to write a "
                    f"cache into it. Choose an empty or new --out directory."
                )
            self._write_manifest()

    def _remove_orphans(self) -> None:
        """Delete shard files a killed run wrote after its last manifest update."""
        listed = {f["file"] for s in self.shards for f in s["files"].values()}
        for p in self.path.glob("shard_*.safetensors"):
            if p.name not in listed:
                p.unlink()
        for p in self.path.glob(".*.tmp"):
            p.unlink()

    @property
    def resumed_contexts(self) -> int:
        return self.shards[-1]["contexts"][1] if self.shards else 0

    @property
    def resumed_rows(self) -> int:
        return self.shards[-1]["rows"][1] if self.shards else 0

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    # -- writing -------------------------------------------------------------------------
    def add(self, acts: dict[str, torch.Tensor], ids: dict[str, torch.Tensor], contexts: int) -> None:
        """Append the rows of one forward pass (already filtered to the kept positions)."""
        if set(acts) != set(self.hooks):
            raise WorkbenchError(f"add() got hooks {sorted(acts)}; this cache has {sorted(self.hooks)}")
        if set(ids) != set(self.row_fields):
            raise WorkbenchError(f"add() got row fields {sorted(ids)}; this cache has {sorted(self.row_fields)}")
        n = next(iter(ids.values())).shape[0]
        for h, a in acts.items():
            if a.shape != (n, self.hooks[h]):
                raise WorkbenchError(f"activations for {h} have shape {tuple(a.shape)}; expected ({n}, {self.hooks[h]})")
            self._pending.acts.setdefault(h, []).append(a.detach().to("cpu", self.dtype))
        for k, v in ids.items():
            self._pending.ids.setdefault(k, []).append(v.detach().cpu())
        self._pending.rows += n
        self._pending.contexts += contexts
        if self._pending.rows >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Write whatever is pending as one shard (no-op when nothing is pending)."""
        p = self._pending
        if p.contexts == 0:
            return
        index = len(self.shards)
        row0, ctx0 = self.resumed_rows, self.resumed_contexts
        entry: dict[str, Any] = {
            "index": index,
            "rows": [row0, row0 + p.rows],
            "contexts": [ctx0, ctx0 + p.contexts],
            "files": {},
            "norms": {},
        }
        try:
            rows = {k: torch.cat(v) for k, v in p.ids.items()}
            entry["files"]["rows"] = self._write(rows_file_name(index), rows)
            for h in self.hooks:
                a = torch.cat(p.acts[h]) if p.acts.get(h) else torch.empty(0, self.hooks[h], dtype=self.dtype)
                norms = a.float().norm(dim=1).double()
                entry["norms"][h] = {"sum": float(norms.sum()), "sum_sq": float((norms * norms).sum())}
                entry["files"][h] = self._write(hook_file_name(index, h), {"acts": a})
            self.shards.append(entry)
            self._write_manifest()
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(self.path, e, len(self.shards)) from e
            raise
        self._pending = _Pending()

    def _write(self, name: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        data = st_save({k: v.contiguous() for k, v in tensors.items()})
        atomic_write_bytes(self.path / name, data)
        return {
            "file": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
        }

    def finish(self) -> dict[str, Any]:
        """Flush the last shard and mark the cache complete; returns the manifest."""
        self.flush()
        self.status = "complete"
        self._write_manifest()
        return self.manifest()

    def manifest(self) -> dict[str, Any]:
        rows = self.resumed_rows
        totals = {"rows": rows, "contexts": self.resumed_contexts, "norms": {}}
        for h, d in self.hooks.items():
            s = sum(sh["norms"][h]["sum"] for sh in self.shards)
            sq = sum(sh["norms"][h]["sum_sq"] for sh in self.shards)
            mean = s / rows if rows else 0.0
            totals["norms"][h] = {
                "mean_norm": mean,
                "rms_norm": (sq / rows) ** 0.5 if rows else 0.0,
                # multiply raw activations by this to get mean norm sqrt(d_model), as SAEs train on
                "norm_scale": (d ** 0.5) / mean if mean > 0 else 1.0,
            }
        return {**self.header, "status": self.status, "shards": self.shards, "totals": totals}

    def _write_manifest(self) -> None:
        try:
            atomic_write_json(self.path / MANIFEST, self.manifest())
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(self.path, e, len(self.shards)) from e
            raise
