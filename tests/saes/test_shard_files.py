"""saes.shard_files in one process: the header it computes is the one a whole save writes, and rows read back.

The multi-rank writes (blocks received one at a time, W_enc's column blocks) are exercised by
tests/saes/test_feature_parallel.py over gloo; here the reference is `atomic_save_safetensors` of
the same tensors, byte for byte, over dtypes of every alignment (safetensors orders by dtype).
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from saes.shard_files import read_rows, safetensors_header, write_sharded
from workbench.distributed import DistContext
from workbench.io import atomic_save_safetensors


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"W_enc": torch.randn(5, 12, generator=g), "b": torch.arange(7, dtype=torch.int64),
            "a_half": torch.randn(3, 4, generator=g).to(torch.bfloat16), "step": torch.tensor(3.0),
            "mask": torch.tensor([True, False, True]), "z16": torch.ones(2, 3, dtype=torch.float16),
            "empty": torch.zeros(0, 4)}


def test_header_and_one_rank_write_equal_a_whole_save(tmp_path):
    t, meta = tensors(), {"step": "4", "architecture": "topk"}
    atomic_save_safetensors(tmp_path / "ref.safetensors", t, meta)
    ref = (tmp_path / "ref.safetensors").read_bytes()
    head, starts = safetensors_header({k: (v.dtype, list(v.shape)) for k, v in t.items()}, meta)
    assert ref[:len(head)] == head
    for k, v in t.items():  # each tensor's bytes where the header says
        raw = v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert ref[starts[k]:starts[k] + len(raw)] == raw, k
    write_sharded(tmp_path / "one.safetensors", t, {"W_enc": 1, "b": 0}, DistContext(), meta)
    assert (tmp_path / "one.safetensors").read_bytes() == ref
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_read_rows_reads_the_rows_asked_for(tmp_path):
    t = tensors()
    atomic_save_safetensors(tmp_path / "f.safetensors", t, {})
    got = read_rows(tmp_path / "f.safetensors", lambda name, shape: (1, 3) if name in ("W_enc", "b") else None)
    assert torch.equal(got["W_enc"], t["W_enc"][1:3]) and torch.equal(got["b"], t["b"][1:3])
    whole = load_file(str(tmp_path / "f.safetensors"))
    assert all(torch.equal(got[k], whole[k]) for k in t if k not in ("W_enc", "b"))
