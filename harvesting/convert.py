"""`sae cache convert`: the same cache with its activations stored in another dtype.

A float32 cache converted to bfloat16 or float16 is byte for byte the cache `sae harvest --dtype`
writes from the same config: a harvest casts the model's float32 activations to the stored dtype
(round to nearest even) and nothing else, and the conversion casts the same float32 values the
same way, through the same writer (same shard boundaries, norms of the stored rows, manifest with
the config's dtype). So halving an existing cache costs a read and a write, not a forward pass.
Converting a half cache to float32 is exact; between the two half types it rounds a second time
(the result is not what a harvest in that type stores).

Like a harvest, a killed conversion resumes after its last finished shard when run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harvesting.cache import CacheWriter, dtype_from_name, to_stored
from harvesting.reader import CacheReader
from workbench.errors import WorkbenchError

# what the writer writes itself (or per run) rather than takes as the header
_OWN_KEYS = ("format", "format_version", "hooks", "row_fields", "shard_tokens", "status", "shards", "totals")


def convert_cache(src: str | Path, out: str | Path, dtype: str, *, progress: bool = False) -> Path:
    """Write the complete cache `src` again at `out` with activations stored as `dtype`; returns `out`."""
    dtype_from_name(dtype)
    src, out = Path(src), Path(out)
    reader = CacheReader(src)  # complete and whole (sizes and headers) or one line saying why not
    if out.exists() and out.resolve() == src.resolve():
        raise WorkbenchError(f"--out {str(out)!r} is the cache being converted; give a new directory")
    m = reader.manifest
    header: dict[str, Any] = {k: v for k, v in m.items() if k not in _OWN_KEYS}
    if isinstance(header.get("config"), dict) and "dtype" in header["config"]:
        header["config"] = {**header["config"], "dtype": dtype}  # what `sae harvest --dtype` records
    hooks = {h: int(v["d_model"]) for h, v in m["hooks"].items()}
    writer = CacheWriter(out, hooks, dtype, int(m["shard_tokens"]), header, tuple(m["row_fields"]))
    if writer.complete:
        return out
    n = len(reader.shards)
    for i in tqdm(range(len(writer.shards), n), unit="shard", desc=f"convert to {dtype}", disable=not progress):
        s = reader.shards[i]
        data = reader.load_shard(i)
        acts = {h: [to_stored(data.pop(h), writer.dtype, h)] for h in hooks}  # refused before a file is written
        ids = {k: [data[k]] for k in writer.row_fields}
        writer.record(writer.write_shard(i, (s["rows"][0], s["rows"][1]), (s["contexts"][0], s["contexts"][1]), acts, ids))
        writer.absorb()
    writer.finish(n)
    return out
