"""`sae train` / `sae sae info` on a real (synthetic-content) activation cache written by the harvester's writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harvesting import CacheWriter
from saes import load_sae
from saes.synthetic import random_dictionary, sparse_activations
from workbench.cli import main

D = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("c") / "acts"
    w = CacheWriter(path, {"blocks.0.hook_resid_post": D, "blocks.1.hook_resid_post": D}, "float32",
                    shard_tokens=1000, header={"model": {"id": "synthetic-model"}, "context_length": 20})
    x = sparse_activations(random_dictionary(40, D, seed=1), 4000, active=3, seed=2, bias=torch.full((D,), 4.0))
    for i in range(0, 4000, 200):
        ids = torch.arange(i, i + 200)
        w.add({"blocks.0.hook_resid_post": x[i:i + 200], "blocks.1.hook_resid_post": 2 * x[i:i + 200]}, {
            "token_ids": ids.to(torch.int32), "doc_ids": (ids // 100).to(torch.int32),
            "context_ids": ids // 20, "positions": (ids % 20).to(torch.int32)}, contexts=10)
    w.finish()
    return path


def args(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--cache", str(cache), "--out", str(out), "--batch-size", "128", "--k", "3",
            "--expansion", "2", "--no-progress", "--init-sample-tokens", "256", "--heldout-fraction", "0.05", *extra]


def test_sae_train_prints_summary_and_saves_a_loadable_sae(cache, tmp_path, capsys):
    rc = main(args(cache, tmp_path / "run", "--hooks", "blocks.1.hook_resid_post", "--arch", "topk", "batchtopk"))
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 2
    for line, arch in zip(out, ["topk", "batchtopk"]):
        assert line.startswith(f"blocks.1.hook_resid_post/{arch}-k3-x2: held-out FVU 0.")
        assert " L0 " in line and "% (" in line and "tokens/s" in line
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["saes"][0]["heldout_fvu"] < 0.8
    sae = load_sae(tmp_path / "run" / "blocks.1.hook_resid_post" / "topk-k3-x2")
    assert sae.cfg.hook == "blocks.1.hook_resid_post" and sae.cfg.model_id == "synthetic-model"
    assert sae.cfg.train["arch"] == ["topk", "batchtopk"] and sae.cfg.d_in == D
    # the training cache's content hash, by which `sae eval` knows its own cache wherever it lies
    from harvesting import CacheReader
    assert sae.cfg.train["cache_identity"] == CacheReader(cache).identity
    # Same command again (with the old, hidden spelling --hook): nothing to train, same summary.
    assert main(args(cache, tmp_path / "run", "--hook", "blocks.1.hook_resid_post", "--arch", "topk", "batchtopk")) == 0
    again = capsys.readouterr().out.strip().splitlines()
    assert [a.split(" tokens, ")[0] for a in again] == [a.split(" tokens, ")[0] for a in out]
    assert main(["sae", "info", str(tmp_path / "run")]) == 0
    info = capsys.readouterr().out
    assert "topk-k3-x2: held-out FVU" in info
    assert main(["sae", "info", str(tmp_path / "run" / "blocks.1.hook_resid_post" / "topk-k3-x2")]) == 0
    assert "architecture=topk" in capsys.readouterr().out
    # The old spelling `sae sae-info` is a hidden alias of `sae sae info`: same output.
    assert main(["sae-info", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out == info


def test_sae_info_on_a_saved_sae_through_the_real_entry_point(cache, tmp_path):
    import subprocess
    import sys

    assert main(args(cache, tmp_path / "run", "--hooks", "blocks.0.hook_resid_post")) == 0
    sae_dir = tmp_path / "run" / "blocks.0.hook_resid_post" / "topk-k3-x2"
    out = subprocess.run([str(Path(sys.executable).parent / "sae"), "sae", "info", "--json", str(sae_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["architecture"] == "topk" and row["hook"] == "blocks.0.hook_resid_post" and row["d_in"] == D
    assert row["num_features"] == 2 * D and row["k"] == 3 and row["dir"] == str(sae_dir)
    missing = subprocess.run([str(Path(sys.executable).parent / "sae"), "sae", "info", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("sae sae info: error: ")
    assert "does not exist" in missing.stderr and missing.stderr.count("\n") == 1


def test_sae_train_names_bad_values(cache, tmp_path, capsys):
    assert main(args(cache, tmp_path / "a", "--hooks", "blocks.9.hook_resid_post")) == 2
    err = capsys.readouterr().err
    assert "blocks.9.hook_resid_post" in err and "blocks.0.hook_resid_post, blocks.1.hook_resid_post" in err
    assert main(args(cache, tmp_path / "b")) == 2
    assert "holds 2 hook points; pass --hooks" in capsys.readouterr().err
    assert main(args(cache, tmp_path / "c", "--hooks", "blocks.0.hook_resid_post", "--arch", "nope")) == 2
    assert "unknown architecture 'nope'; valid choices: topk" in capsys.readouterr().err
    assert main(args(cache, tmp_path / "d", "--hooks", "blocks.0.hook_resid_post", "--k", "32")) == 2
    assert "k=32 must be below the number of features (32 = expansion 2 x d_model 16" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "e")]) == 2
    assert "--cache DIR is required" in capsys.readouterr().err
    assert main(args(tmp_path / "missing", tmp_path / "f")) == 2
    assert "does not exist" in capsys.readouterr().err
