"""What machine a benchmark ran on, read one way for every script's header line."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the architecture where that file is unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_units() -> str:
    """Whether the CPU has bf16 matrix instructions, the thing that decides CPU bf16 speed."""
    try:
        return "avx512_bf16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no avx512_bf16"
    except OSError:
        return "bf16 units unknown"
