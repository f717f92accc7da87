"""Atomic file writes and checksums.

Every file a user or a resumed run may read is written to a temporary name in the same
directory, flushed, fsynced and renamed, so a kill at any moment leaves either the old file or
the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

import torch


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[int]:
    """A descriptor of a new temporary file beside `path` that becomes `path` when the block ends:
    fsynced, closed, renamed over `path`, the directory fsynced. If the block raises, the temporary
    file is closed and removed and `path` is untouched. For writers that place the bytes themselves
    (saes.shard_files writes blocks from other ranks at their offsets) rather than hand over a buffer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers never see a partial file."""
    with atomic_file(path) as fd, os.fdopen(fd, "wb", closefd=False) as f:
        f.write(data)


def atomic_save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG, written atomically, and the figure closed (plots in loops leak otherwise)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, with sorted keys so equal content gives equal bytes."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save tensors as safetensors atomically; equal input gives equal bytes in any process."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata or {}))
    atomic_write_bytes(path, canonical_safetensors(data))


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header written in sorted key order.

    safetensors keeps the metadata in a hash map whose order changes from process to process, so
    equal tensors and metadata saved by two processes (a run and its rerun after a kill) could
    differ in their header bytes. The tensor data and its offsets are untouched; the header is
    padded with spaces to a multiple of 8 bytes, as safetensors itself does.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks so memory stays flat for large shards."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
