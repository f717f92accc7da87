"""The activation cache on disk: manifest, shard files and the writer.

Layout of one cache directory::

    manifest.json                       format version, model, hooks, corpus, shards (+ checksums)
    shard_00000.rows.safetensors        per-row ids: token_ids, doc_ids, context_ids, positions
                                        (vision: image_ids, patch_ids, context_ids, positions)
    shard_00000.<hook>.safetensors      tensor "acts" [rows, d_model] for that hook point
    shard_00000.done.json               only while a harvest runs: that shard's manifest entry,
                                        written (atomically) after its files; see below

Only rows a SAE should train on are stored: positions the harvest excludes (BOS, CLS/SEP,
padding) never reach disk, so a reader needs no masks. Every shard file is written to a
temporary name and renamed, then the manifest (which lists finished shards only) is rewritten
atomically; a killed harvest therefore resumes after the last listed shard, and since shards
always end on a forward-pass boundary the resumed run recomputes exactly the same batches.
No timestamps are stored, so an interrupted-then-resumed cache is byte-identical to an
uninterrupted one.

A harvest may finish shards out of order (several processes, each writing its own shards):
each finished shard's entry is first written as its own small record (`*.done.json`), and the
main process, after each shard of its own and at the end, moves the records that extend the
manifest's contiguous prefix into it and deletes them. A finished shard is therefore one listed in the manifest or one with a record;
a complete cache holds no records.
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

from harvesting.manifest import (  # noqa: F401  (re-exported: the cache's public names)
    DTYPES, FORMAT_NAME, FORMAT_VERSION, MANIFEST, hooks_problem, load_manifest_json, read_manifest,
    version_problem,
)


def dtype_from_name(name: str) -> torch.dtype:
    if not isinstance(name, str) or name not in DTYPES:
        raise WorkbenchError(f"unknown cache dtype {name!r}; valid choices: {', '.join(DTYPES)}")
    return DTYPES[name]


def to_stored(a: torch.Tensor, dtype: torch.dtype, hook: str) -> torch.Tensor:
    """Rows of hook `hook` cast to the cache's dtype on the CPU, refusing values the cast would make inf.

    float16 ends at 65504: a residual stream beyond it (models with massive activations) would be
    stored as inf and poison every norm and every SAE trained on the cache. bfloat16 has float32's
    range, so only float16 can refuse; values already NaN or inf are stored as they are (the
    trainer names them).
    """
    out = a.detach().to("cpu", dtype)
    if out.dtype != a.dtype and not bool(torch.isfinite(out).all()):
        src = a.detach().to("cpu", torch.float32)
        over = torch.isfinite(src) & ~torch.isfinite(out)
        if bool(over.any()):
            big = float(src[over].abs().max())
            name = str(dtype).removeprefix("torch.")
            raise WorkbenchError(
                f"activations of hook {hook!r} reach {big:.6g}, beyond what {name} holds "
                f"(largest {torch.finfo(dtype).max:.6g}); harvest with --dtype bfloat16 (float32's range in half "
                f"the bytes) or float32"
            )
    return out


def hook_file_name(index: int, hook: str) -> str:
    return f"shard_{index:05d}.{hook}.safetensors"


def rows_file_name(index: int) -> str:
    return f"shard_{index:05d}.rows.safetensors"


def record_file_name(index: int) -> str:
    return f"shard_{index:05d}.done.json"


def shard_is_full(rows: int, shard_tokens: int) -> bool:
    """The one flush rule: a shard ends after the forward pass that brings it to `shard_tokens` rows.

    Shards thus end on forward-pass boundaries, which is what lets a resumed or multi-process
    harvest recompute exactly the batches of an uninterrupted one.
    """
    return rows >= shard_tokens


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
        prepare: bool = True,
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
        self.check()
        if prepare:
            self.prepare()

    # -- lifecycle -----------------------------------------------------------------------
    def check(self) -> None:
        """Read the directory's state, refusing a different harvest or a foreign directory; writes nothing.

        Every process of a multi-process harvest runs this, so a refusal is raised on all alike;
        `prepare` (one process) then creates or tidies the directory.
        """
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
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise WorkbenchError(
                f"{str(self.path)!r} exists, is not empty and holds no cache manifest; refusing to write a "
                f"cache into it. Choose an empty or new --out directory."
            )

    def prepare(self) -> None:
        """Create the directory and manifest, or absorb a killed run's records and delete its orphans."""
        if (self.path / MANIFEST).exists():
            self.absorb()
            self._remove_orphans()
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WorkbenchError(f"cannot create the cache directory {str(self.path)!r}: {e}") from e
        self._write_manifest()

    def _remove_orphans(self) -> None:
        """Delete shard files a killed run wrote without finishing (no manifest entry, no record)."""
        finished = self.finished()
        listed = {f["file"] for s in finished.values() for f in s["files"].values()}
        listed |= {record_file_name(i) for i in finished}
        for p in [*self.path.glob("shard_*.safetensors"), *self.path.glob("shard_*.done.json")]:
            if p.name not in listed:
                p.unlink()
        for p in self.path.glob(".*.tmp"):
            p.unlink()

    def _records(self) -> dict[int, dict[str, Any]]:
        out = {}
        for p in sorted(self.path.glob("shard_*.done.json")):
            try:
                entry = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue  # written atomically, so only a hand-damaged record lands here: redo that shard
            index = entry.get("index") if isinstance(entry, dict) else None
            if isinstance(index, int) and not isinstance(index, bool) and record_file_name(index) == p.name:
                out[index] = entry
        return out

    def finished(self) -> dict[int, dict[str, Any]]:
        """Every finished shard's manifest entry by index: those in the manifest and those with a record."""
        return {**self._records(), **{s["index"]: s for s in self.shards}}

    def absorb(self) -> None:
        """Move records that extend the manifest's contiguous prefix into it (one process only)."""
        records = self._records()
        start = n = len(self.shards)
        while n in records:
            self.shards.append(records[n])
            n += 1
        if n > start:
            self._write_manifest()
        for i in records:
            if i < n:
                (self.path / record_file_name(i)).unlink(missing_ok=True)

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
            self._pending.acts.setdefault(h, []).append(to_stored(a, self.dtype, h))
        for k, v in ids.items():
            self._pending.ids.setdefault(k, []).append(v.detach().cpu())
        self._pending.rows += n
        self._pending.contexts += contexts
        if shard_is_full(self._pending.rows, self.shard_tokens):
            self.flush()

    def flush(self) -> None:
        """Write whatever is pending as the next shard (no-op when nothing is pending)."""
        p = self._pending
        if p.contexts == 0:
            return
        row0, ctx0 = self.resumed_rows, self.resumed_contexts
        entry = self.write_shard(len(self.shards), (row0, row0 + p.rows), (ctx0, ctx0 + p.contexts), p.acts, p.ids)
        self.shards.append(entry)
        self._write_manifest()
        self._pending = _Pending()

    def write_shard(self, index: int, rows: tuple[int, int], contexts: tuple[int, int],
                    acts: dict[str, list[torch.Tensor]], ids: dict[str, list[torch.Tensor]]) -> dict[str, Any]:
        """Write shard `index`'s files (rows already filtered and in order); returns its manifest entry."""
        entry: dict[str, Any] = {
            "index": index,
            "rows": list(rows),
            "contexts": list(contexts),
            "files": {},
            "norms": {},
        }
        try:
            row_ids = {k: torch.cat(v) for k, v in ids.items()}
            entry["files"]["rows"] = self._write(rows_file_name(index), row_ids)
            for h in self.hooks:
                a = to_stored(torch.cat(acts[h]), self.dtype, h) if acts.get(h) else torch.empty(0, self.hooks[h], dtype=self.dtype)
                norms = a.float().norm(dim=1).double()
                entry["norms"][h] = {"sum": float(norms.sum()), "sum_sq": float((norms * norms).sum())}
                entry["files"][h] = self._write(hook_file_name(index, h), {"acts": a})
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(self.path, e, len(self.shards)) from e
            raise
        return entry

    def record(self, entry: dict[str, Any]) -> None:
        """Mark a shard written by `write_shard` finished, whatever the order shards finish in."""
        try:
            atomic_write_json(self.path / record_file_name(entry["index"]), entry)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(self.path, e, len(self.shards)) from e
            raise

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

    def finish(self, shards: int | None = None) -> dict[str, Any]:
        """Flush the last shard and mark the cache complete; returns the manifest.

        With `shards`, first absorb every record and refuse to finish unless exactly that many
        shards are then listed (a multi-process harvest's last step, on its main process).
        """
        self.flush()
        if shards is not None:
            self.absorb()
            if len(self.shards) != shards:
                missing = sorted(set(range(shards)) - {s["index"] for s in self.shards})[:5]
                raise WorkbenchError(f"cannot finish {str(self.path)!r}: shard(s) {missing} of {shards} are not "
                                     f"written; run the same command again to write them")
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
