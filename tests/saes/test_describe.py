"""print(sae) and the notebook display say what an SAE is, and a loaded one its training result."""

from __future__ import annotations

import json

import torch

from saes import TensorSource, TrainConfig, load_sae, train
from saes.synthetic import random_dictionary, sparse_activations


def test_repr_and_summary_of_a_trained_sae(tmp_path, one_thread):
    x = sparse_activations(random_dictionary(24, 12, seed=1), 2_000, active=2, seed=2)
    train(TrainConfig(arch=("topk",), k=(3,), expansion=(2,), batch_size=128, out=str(tmp_path / "run"),
                      progress=False, checkpoint_every=0, heldout_fraction=0.1), TensorSource(x))
    run = json.loads((tmp_path / "run" / "summary.json").read_text())
    sae = load_sae(tmp_path / "run")
    text = repr(sae)
    assert text.startswith("TopKSAE(topk, ") and "d_in=12" in text and "width=24" in text and "k=3" in text
    facts = sae.summary()
    assert facts["train: heldout_fvu"] == run["saes"][0]["heldout_fvu"]
    assert "eval: ce_loss_score" not in facts
    (sae.directory / "eval.json").write_text(json.dumps({"ce_loss_score": 0.9, "nested": {"x": 1}}))
    facts = load_sae(tmp_path / "run").summary()
    assert facts["eval: ce_loss_score"] == 0.9 and "eval: nested" not in facts
    html = sae._repr_html_()
    assert "<table>" in html and "heldout_fvu" in html and "TopKSAE" in html


def test_summary_survives_damaged_files(tmp_path, one_thread):
    x = sparse_activations(random_dictionary(24, 12, seed=1), 1_000, active=2, seed=2)
    train(TrainConfig(arch=("topk",), k=(3,), expansion=(2,), batch_size=128, out=str(tmp_path / "run"),
                      progress=False, checkpoint_every=0), TensorSource(x))
    (tmp_path / "run" / "summary.json").write_text("{not json")
    sae = load_sae(tmp_path / "run")
    (sae.directory / "eval.json").write_bytes(b"\xff\x00")
    facts = sae.summary()
    assert facts["architecture"] == "topk" and not any(k.startswith(("train:", "eval:")) for k in facts)
    assert torch.is_tensor(sae.W_dec)
