"""The tests here share `peers.py` (the peers' file layouts and formulas); pytest runs in importlib
mode, which puts no test directory on sys.path, so this one is added explicitly."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
