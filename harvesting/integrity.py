"""Where a cache's files may be, and whether they are whole: the checks the reader and verify share.

A manifest is data a user may have been handed, so nothing it names is trusted: every file
entry must be a plain file name inside the cache directory (no `../`, no absolute path, no
separator, no symlink leading out of the cache). The reader runs the cheap checks when a cache
is opened (each file present, its size and safetensors header as the manifest says), so a
damaged shard is named at once instead of failing mid-run; `sae cache verify` adds the
checksums and the totals.

A flipped byte inside a shard's data keeps the file's size and header, so only a checksum sees
it. The reader therefore checks each shard file's sha256 against the manifest the first time it
reads that file (`checksum_problem`): one sequential read of a file whose pages the epoch maps in
anyway (benchmarks/RESULTS.md gives its cost against an epoch), so a damaged cache stops training
or evaluation with one line instead of being learned from. `verify=True` hashes everything on
open instead, and the reader then skips these first-read checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.io import sha256_file

# safetensors' dtype names in torch's spelling (the manifest's), for every type a file may hold,
# so that a file of an unexpected type is named as torch would name it
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
              "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
              "F8_E5M2": "float8_e5m2"}


class UnsafeEntry(WorkbenchError):
    """A manifest entry pointing outside its cache."""


def entry_path(root: Path, name: object, where: str) -> Path:
    """The path of manifest file entry `name`, refused unless it is a plain file inside `root`."""
    bad = None
    if not isinstance(name, str) or not name:
        bad = "is not a file name"
    elif name.startswith(("/", "\\")) or Path(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        bad = "is an absolute path"
    elif "/" in name or "\\" in name or name in (".", ".."):
        bad = "is not a plain file name in the cache directory"
    if bad is None:
        p = root / name
        if p.is_symlink() or p.exists():
            try:
                real = p.resolve(strict=False)
                inside = real.is_relative_to(root.resolve())
            except (OSError, RuntimeError):
                inside = False
            if not inside:
                bad = "is a symlink leading out of the cache"
        if bad is None:
            return p
    raise UnsafeEntry(f"{where}: manifest entry {name!r} {bad}; refusing to read it (the manifest is damaged or hostile)")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header (without loading a tensor) and the byte size it implies."""
    with open(path, "rb") as f:
        raw_n = f.read(8)
        if len(raw_n) != 8:
            raise ValueError("file ends before its header")
        n = int.from_bytes(raw_n, "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError("bad header length")
        raw = f.read(n)
        if len(raw) != n:
            raise ValueError("file ends inside its header")
    header = json.loads(raw)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return header, 8 + n + end


def expected_keys(manifest: dict[str, Any]) -> list[str]:
    """The file keys every shard entry must have: the row ids, then each hook point."""
    return ["rows", *manifest["hooks"]]


def shard_file_problems(root: Path, manifest: dict[str, Any], shard: dict[str, Any], key: str,
                        checksum: bool = False) -> list[str]:
    """Problems of one file of one shard (empty when it is whole): entry, presence, size, header [, sha256]."""
    idx = shard.get("index", "?")
    info = shard.get("files", {}).get(key)
    if not isinstance(info, dict):
        return [f"shard {idx}: no file for {'the row ids' if key == 'rows' else 'hook ' + key} in the manifest entry"]
    where = f"shard {idx} ({info.get('file')})"
    try:
        f = entry_path(root, info.get("file"), f"shard {idx}")
    except UnsafeEntry as e:
        return [str(e)]
    if not f.is_file():
        return [f"{where}: missing"]
    size = f.stat().st_size
    if size != info.get("bytes"):
        return [f"{where}: {size} bytes on disk, manifest says {info.get('bytes')} (truncated or overwritten)"]
    if checksum:
        digest = sha256_file(f)
        if digest != info.get("sha256"):
            return [f"{where}: checksum mismatch (sha256 {digest[:12]}..., manifest {str(info.get('sha256'))[:12]}...)"]
    try:
        header, implied = read_header(f)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        return [f"{where}: unreadable safetensors header ({e})"]
    problems = []
    if implied != size:
        problems.append(f"{where}: header describes {implied} bytes, the file has {size} (truncated)")
    n = shard["rows"][1] - shard["rows"][0]
    for name, shape in info.get("shapes", {}).items():
        h = header.get(name)
        if h is None:
            problems.append(f"{where}: tensor {name!r} missing")
            continue
        if h["shape"] != shape or h["shape"][0] != n:
            problems.append(f"{where}: tensor {name!r} has shape {h['shape']}, expected {shape} with {n} rows")
        dt = _ST_DTYPES.get(h["dtype"], h["dtype"])
        if dt != info.get("dtypes", {}).get(name):
            problems.append(f"{where}: tensor {name!r} has dtype {dt}, expected {info.get('dtypes', {}).get(name)}")
    if key in manifest["hooks"]:
        want = manifest["hooks"][key]
        got = info.get("shapes", {}).get("acts", [0, 0])
        if got[1:] != [want["d_model"]] or info.get("dtypes", {}).get("acts") != want["dtype"]:
            problems.append(f"{where}: acts {got} {info.get('dtypes', {}).get('acts')} do not match hook "
                            f"{key} (d_model {want['d_model']}, {want['dtype']})")
    return problems


def checksum_problem(path: Path, shard: dict[str, Any], key: str) -> str | None:
    """The sha256 of one shard file (at `path`, already checked to lie in the cache) against the
    manifest's: what differs, for the caller to name the shard, or None when they agree. A manifest
    without a checksum for the file (written before checksums were recorded) gives None."""
    want = (shard.get("files", {}).get(key) or {}).get("sha256")
    if not want:
        return None
    digest = sha256_file(path)
    if digest == want:
        return None
    return (f"checksum mismatch (sha256 {digest[:12]}..., manifest {str(want)[:12]}...): its bytes changed after "
            f"it was written")


def cache_problems(root: Path, manifest: dict[str, Any], checksum: bool = False) -> tuple[list[str], int]:
    """Every problem of every shard file (and the shard ranges), and how many files were looked at."""
    problems: list[str] = []
    files = 0
    expected_row = expected_ctx = 0
    keys = expected_keys(manifest)
    for s in manifest["shards"]:
        if s["rows"][0] != expected_row:
            problems.append(f"shard {s['index']}: rows start at {s['rows'][0]}, expected {expected_row}")
        if s["contexts"][0] != expected_ctx:
            problems.append(f"shard {s['index']}: contexts start at {s['contexts'][0]}, expected {expected_ctx}")
        expected_row, expected_ctx = s["rows"][1], s["contexts"][1]
        for key in [*keys, *(k for k in s.get("files", {}) if k not in keys)]:
            files += 1
            problems += shard_file_problems(root, manifest, s, key, checksum)
    return problems, files


def check_opened(root: Path, manifest: dict[str, Any]) -> None:
    """The cheap check a reader runs on open: one clear line naming the first bad file."""
    problems, _ = cache_problems(root, manifest, checksum=False)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise WorkbenchError(f"the cache at {str(root)!r} is damaged: {problems[0]}{more}; "
                             f"run `sae cache verify {root}` for the full list, and harvest it again")
