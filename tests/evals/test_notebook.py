"""examples/inspect_features.ipynb runs top to bottom (nbclient) on the tiny SAE and cache."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.evals.inspect_support import tiny_for

ROOT = Path(__file__).resolve().parents[2]


def test_inspect_features_notebook_runs(tmp_path_factory, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    torch.set_num_threads(1)
    tiny = tiny_for(tmp_path_factory)
    monkeypatch.setenv("INSPECT_SAE", str(tiny["sae"]))
    monkeypatch.setenv("INSPECT_CACHE", str(tiny["cache"]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(ROOT / "examples" / "inspect_features.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("Feature " in h and "Top activations" in h for h in html)  # feature cards rendered
    assert any("log10 feature density" in h for h in html)  # the summary
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # spectrum, clusters, map
    text = "".join(o.get("text", "") for o in outputs)
    assert "power-law slope" in text and "AMI(lobes, geometry)" in text and "TopKSAE(topk" in text
