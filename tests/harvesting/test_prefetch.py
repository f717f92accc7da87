"""The background batch thread never outlives its consumer, not even the interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A prefetcher whose thread is always inside a torch op: a script that takes one batch and ends.
_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from harvesting.prefetch import prefetched

def busy():
    a = torch.randn(1500, 1500)
    while True:
        yield {{"x": a @ a}}

it = prefetched(busy(), 2)
next(it)
print("took one batch")
"""


def test_a_script_that_stops_reading_early_exits_cleanly() -> None:
    # Without the exit hook the interpreter tears down while the daemon thread is inside the
    # matmul and the process aborts ("terminate called without an active exception", rc 134).
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", _SCRIPT.format(root=str(ROOT))], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "took one batch" in proc.stdout
