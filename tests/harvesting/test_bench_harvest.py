"""benchmarks/bench_harvest.py's harvest table on a chosen device (issue 21 measures it on a GPU).

Run on the tiny random Llama and the local corpus of this folder's conftest, on the CPU, with the
reader tables skipped: the harvest and the plain forward both run and the table names the device.
A bad --device is one line and exit 2 before any model is loaded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_harvest.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def test_harvest_table_runs_on_the_cpu(tiny_causal_dir, text_corpus, tmp_path):
    proc = bench("--device", "cpu", "--model", str(tiny_causal_dir), "--corpus", str(text_corpus),
                 "--hooks", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "--tokens", "1024",
                 "--context-length", "32", "--reps", "1", "--skip-reader", "--skip-memory", "--scratch", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "truncated after layer 1" in out and "on cpu" in out, out  # 2 of the 3 blocks run, on the chosen device
    plain = re.search(r"^plain HF forward.*?  ([0-9,]+)  ", out, re.M)
    ours = re.search(r"^sae harvest.*?  ([0-9,]+)  .*  ([0-9.]+) *$", out, re.M)
    assert plain and ours, out
    assert float(ours.group(2)) > 0 and int(plain.group(1).replace(",", "")) > 0
    assert "2. reader" not in out and "3. reader" not in out  # --skip-reader, --skip-memory


def test_bad_device_is_one_line_and_exit_2(tmp_path):
    proc = bench("--device", "gpu0", "--scratch", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "'gpu0'" in proc.stderr and "cuda" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
