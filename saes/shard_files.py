"""One ordinary safetensors file written from tensors split across ranks, and a rank's rows read back.

Feature-parallel training (saes.feature_parallel) keeps every file it writes in the format one
process writes (a checkpoint another layout can resume, an SAE any loader reads) without any rank
holding a whole tensor: `write_sharded` has the group's first rank write the header and its own
blocks, then receive the other ranks' blocks one at a time and write each at its place, so its
peak is one block, not the file. A block split along axis 0 (W_dec, the encoder's [F, d] storage,
their Adam moments: rows, row-major) is one contiguous byte range; along axis 1 (the saved W_enc
[d, F], the transpose of the storage) it is a column block, written row by row. The result is
byte for byte `workbench.io.atomic_save_safetensors` of the whole tensors (the same canonical
header: the tensors' order in the file is safetensors' own, read off a save of one-element
stand-ins), and atomic the same way (`workbench.io.atomic_file`: a temporary file in the
directory, fsynced, renamed).

`read_rows` is the way back: each tensor's rows [lo, hi) along axis 0 through safetensors' slices
of the memory-mapped file, so a resuming rank reads its rows and never the whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from workbench.distributed import DistContext
from workbench.io import atomic_file


def _whole_shape(t: Tensor, axis: int | None, n: int) -> list[int]:
    shape = list(t.shape)
    if axis is not None:
        shape[axis] *= n
    return shape


def safetensors_header(entries: Mapping[str, tuple[torch.dtype, list[int]]],
                       metadata: Mapping[str, str]) -> tuple[bytes, dict[str, int]]:
    """The canonical header (`workbench.io.canonical_safetensors`) of a file holding tensors of these
    dtypes and shapes, and each tensor's byte offset in the file."""
    from safetensors.torch import save

    stand_ins = save({k: torch.zeros(1, dtype=dt) for k, (dt, _) in entries.items()}, metadata=dict(metadata))
    n = int.from_bytes(stand_ins[:8], "little")
    probe = json.loads(stand_ins[8:8 + n])
    order = sorted(entries, key=lambda k: probe[k]["data_offsets"][0])  # safetensors' order: by dtype, then name
    header: dict[str, object] = {k: v for k, v in probe.items() if k == "__metadata__"}
    at = 0
    starts = {}
    for k in order:
        dt, shape = entries[k]
        size = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
        header[k] = {"dtype": probe[k]["dtype"], "shape": list(shape), "data_offsets": [at, at + size]}
        starts[k] = at
        at += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    head = len(text).to_bytes(8, "little") + text
    return head, {k: len(head) + s for k, s in starts.items()}


def _bytes(t: Tensor):
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def write_sharded(path: str | os.PathLike, tensors: Mapping[str, Tensor], split: Mapping[str, int],
                  group: DistContext, metadata: Mapping[str, str]) -> None:
    """Write `path` = the whole tensors (every rank of `group` calls this with its own blocks).

    `tensors[name]` is this rank's block: for `name` in `split`, block `group.rank` of equal blocks
    along axis `split[name]` (0 or 1; 1 only for 2-D tensors); otherwise the whole tensor, the same
    on every rank (the first rank's copy is written). A collective over `group`.
    """
    n, me = group.world_size, group.rank
    names = sorted(tensors)
    if me != 0:  # send each block, in the order the first rank receives them
        first = group.global_ranks[0]
        for k in names:
            if k in split:
                dist.send(tensors[k].detach().contiguous(), dst=first, group=group.group)
        return
    entries = {k: (tensors[k].dtype, _whole_shape(tensors[k], split.get(k), n)) for k in names}
    head, starts = safetensors_header(entries, metadata)
    with atomic_file(path) as fd:
        os.ftruncate(fd, len(head) + sum(_nbytes(e) for e in entries.values()))
        _pwrite_all(fd, head, 0)
        ranks = group.global_ranks
        for k in names:
            t = tensors[k].detach()
            if k not in split:
                _pwrite_all(fd, _bytes(t), starts[k])
                continue
            for r in range(n):
                if r:
                    block = torch.empty_like(t, memory_format=torch.contiguous_format)
                    dist.recv(block, src=ranks[r], group=group.group)
                else:
                    block = t
                _write_block(fd, block, starts[k], r, split[k], entries[k][1])
                del block


def _nbytes(entry: tuple[torch.dtype, list[int]]) -> int:
    dt, shape = entry
    return torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()


def _write_block(fd: int, block: Tensor, start: int, r: int, axis: int, whole: list[int]) -> None:
    """Block `r` of a tensor split along `axis` into its place in the file (the tensor starts at `start`)."""
    data = _bytes(block)
    if axis == 0:
        _pwrite_all(fd, data, start + r * len(data))
        return
    rows, cols = block.shape  # a column block of a row-major [rows, whole[1]] tensor: one piece per row
    row, stride = cols * block.element_size(), whole[1] * block.element_size()
    for i in range(rows):
        _pwrite_all(fd, data[i * row:(i + 1) * row], start + i * stride + r * row)


def read_rows(path: str | os.PathLike,
              rows_of: Callable[[str, tuple[int, ...]], tuple[int, int] | None]) -> dict[str, Tensor]:
    """Every tensor of a safetensors file; those for which `rows_of(name, shape)` gives (lo, hi) only
    their rows [lo, hi) along axis 0, read through the memory-mapped file (no whole tensor in memory)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            sl = f.get_slice(k)
            r = rows_of(k, tuple(sl.get_shape()))
            out[k] = sl[r[0]:r[1]].clone() if r is not None else f.get_tensor(k).clone()
    return out
