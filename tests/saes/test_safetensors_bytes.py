"""Saved safetensors files are byte-identical across processes (a rerun after a kill must match)."""

from __future__ import annotations

import subprocess
import sys

from safetensors.torch import load_file

SAVE = """
import sys, torch
from workbench.io import atomic_save_safetensors
atomic_save_safetensors(sys.argv[1], {"b": torch.arange(5.0), "a": torch.ones(2, 3, dtype=torch.int64)},
                        {"architecture": "topk", "format": "sae-workbench", "step": "7", "z": "1", "m": "2"})
"""


def test_equal_tensors_and_metadata_give_equal_bytes_in_separate_processes(tmp_path) -> None:
    outs = []
    for i in range(3):  # the metadata hash order differs between processes (PYTHONHASHSEED does not fix Rust's)
        p = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", SAVE, str(p)], check=True)
        outs.append(p.read_bytes())
    assert all(o == outs[0] for o in outs[1:])
    t = load_file(str(tmp_path / "0.safetensors"))
    assert t["b"].tolist() == [0, 1, 2, 3, 4] and t["a"].shape == (2, 3)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == {"architecture": "topk", "format": "sae-workbench", "step": "7", "z": "1", "m": "2"}
