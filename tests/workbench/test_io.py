"""Atomic writes leave the old file or the new one, never a partial one."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import load_file

from workbench import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, sha256_file


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path) -> None:
    p = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(p.parent) == ["f.bin"]


def test_failed_write_keeps_old_content(tmp_path) -> None:
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_bytes(p, object())  # type: ignore[arg-type]
    assert p.read_text().strip().startswith("{")
    assert os.listdir(tmp_path) == ["m.json"]


def test_safetensors_round_trip_and_checksum(tmp_path) -> None:
    t = {"w": torch.randn(3, 5), "i": torch.arange(4)}
    p = tmp_path / "t.safetensors"
    atomic_save_safetensors(p, t, {"k": "v"})
    back = load_file(p)
    assert torch.equal(back["w"], t["w"]) and torch.equal(back["i"], t["i"])
    assert sha256_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()
