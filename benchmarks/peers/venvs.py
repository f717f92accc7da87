"""Throwaway virtual environments holding each peer library (never a dependency of ours).

One venv per peer under cache/peers/venvs/ (git-ignored), reused while its marker file records the
same pins. The CPU build of torch is installed first, pinned to the workbench's, so pip resolving
the peer's own requirements (sae-lens wants transformer-lens < 4, for instance) keeps it instead
of pulling a multi-GB CUDA build; every run then uses the same torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"
PEERS = {"sparsify": ("eai-sparsify==1.3.3",), "saelens": ("sae-lens==6.54.12",)}
MARKER = ".peers-ready"


def python_of(root: Path, name: str) -> Path:
    return root / name / "bin" / "python"


def ready(root: Path, name: str) -> bool:
    marker = root / name / MARKER
    return python_of(root, name).is_file() and marker.is_file() and \
        json.loads(marker.read_text()) == [TORCH, *PEERS[name]]


def ensure(root: Path, name: str, log=print) -> Path:
    """The venv's python, building the venv first when it is missing or holds other pins."""
    if name not in PEERS:
        raise SystemExit(f"unknown peer {name!r}; peers: {sorted(PEERS)}")
    py = python_of(root, name)
    if ready(root, name):
        return py
    d = root / name
    if not py.is_file():
        log(f"building {d} (a few minutes, once)")
        subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    for spec in ((TORCH,), PEERS[name]):
        log(f"{d}: pip install {' '.join(spec)}")
        proc = subprocess.run([str(py), "-m", "pip", "install", "-q", *spec], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"pip install {' '.join(spec)} into {d} failed:\n{proc.stderr[-3000:]}")
    (d / MARKER).write_text(json.dumps([TORCH, *PEERS[name]]))
    return py
