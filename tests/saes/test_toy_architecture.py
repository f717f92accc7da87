"""A new architecture is one file's worth of code plus one registration: nothing else changes.

`ToyTop1SAE` below is defined and registered here only. It declares its policy (no k, an L1
penalty on the run's `l1_coef`, no aux loss, no batch rule); the trainer, the configs, the
sweep grid, the held-out evaluation and the SAE file format must all follow it.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor

from saes import Penalty, SparseAutoencoder, StepContext, StepOutput, TensorSource, TrainConfig, load_sae, register, train
from saes.base import selector_training_step
from saes.config import sae_name
from saes.kernels import SparseCodes, TopK
from saes.registry import architectures, unregister
from saes.synthetic import random_dictionary, sparse_activations

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------- the whole architecture
class ToyTop1SAE(SparseAutoencoder):
    """Each token keeps only its largest pre-activation; an L1 penalty on the kept values."""

    architecture = "toy_top1"
    uses_k = False
    penalty = Penalty("l1", coef_field="l1_coef", default_coef=5.0, help="L1 on the kept value")
    skipped_aux_losses = ("auxk",)

    def encode(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        return self._encode_with(x, TopK(1), matmul_dtype)

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        out, codes = selector_training_step(self, x, ctx, TopK(1))
        l1 = codes.vals.sum() / ctx.denom
        out.loss = out.loss + ctx.sparsity_coef * l1
        out.terms["coef"] = torch.tensor(ctx.sparsity_coef)
        return out
# -----------------------------------------------------------------------------------------


@pytest.fixture
def toy():
    register(ToyTop1SAE)
    yield ToyTop1SAE
    unregister(ToyTop1SAE.architecture)


def test_toy_architecture_trains_saves_and_loads(toy, tmp_path):
    assert "toy_top1" in architectures()
    x = sparse_activations(random_dictionary(24, 8, seed=1), 3000, active=1, seed=2)
    cfg = TrainConfig(arch=("toy_top1", "topk"), k=(2, 3), expansion=(4,), batch_size=100, out=str(tmp_path),
                      progress=False, checkpoint_every=0, log_every=5, heldout_fraction=0.1, init_sample_tokens=200,
                      l1_coef=0.01, sparsity_warmup_fraction=0.2, lr=1e-2)
    # No k: one toy SAE per hook x expansion, named without k; topk gets one per k.
    assert cfg.sae_grid(["x"]) == [("x", "toy_top1", 0, 4), ("x", "topk", 2, 4), ("x", "topk", 3, 4)]
    assert sae_name("x", "toy_top1", 0, 4) == "x/toy_top1-x4"
    summary = train(cfg, TensorSource(x))
    rows = {r["name"]: r for r in summary["saes"]}
    assert set(rows) == {"x/toy_top1-x4", "x/topk-k2-x4", "x/topk-k3-x4"}
    toy_row = rows["x/toy_top1-x4"]
    assert toy_row["architecture"] == "toy_top1" and toy_row["heldout_l0"] <= 1.0
    assert "heldout_fvu_batch_rule" not in toy_row  # no batch rule declared
    assert toy_row["heldout_fvu"] < 0.7, "one active feature per token should explain most of 1-sparse data"
    # The trainer asked the class for its penalty: the coefficient reached the step, warmed up.
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    coefs = [m["coef"] for m in lines if m["sae"] == "x/toy_top1-x4"]
    assert coefs[0] < 0.01 and coefs[-1] == pytest.approx(0.01)
    run = json.loads((tmp_path / "run.json").read_text())
    assert {s["name"]: s["aux_loss"] for s in run["saes"]}["x/toy_top1-x4"] == "none"
    # Saved in the common format, loaded back as the toy class, same outputs as reported.
    sae = load_sae(tmp_path / "x" / "toy_top1-x4")
    assert type(sae) is ToyTop1SAE and sae.cfg.architecture == "toy_top1"
    held = x[-300:]
    with torch.no_grad():
        got = float((sae(held) - held).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
    assert got == pytest.approx(toy_row["heldout_fvu"], rel=1e-4)


def test_unknown_architecture_lists_the_registered_ones(toy):
    from workbench.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match=r"unknown architecture 'toy'; valid choices: topk, .*, toy_top1"):
        TrainConfig(arch=("toy",))
    with pytest.raises(WorkbenchError, match=r"--aux-loss zipf applies to feature_choice and mutual_choice, not 'toy_top1'"):
        from saes.registry import resolve_aux_loss

        resolve_aux_loss(toy, "zipf")


def test_every_policy_names_real_config_fields():
    """Declared hyper-parameters are SAEConfig fields, penalty coefficients TrainConfig fields with the declared default."""
    import dataclasses

    from saes import SAEConfig
    from saes.registry import architecture_classes, aux_loss_choices

    sae_fields = {f.name: f for f in dataclasses.fields(SAEConfig)}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for cls in architecture_classes():
        assert set(cls.hyperparameters) <= set(sae_fields), cls
        assert cls.default_aux == "none" or cls.default_aux in cls.aux_losses, cls
        assert set(cls.aux_losses) | set(cls.skipped_aux_losses) <= set(aux_loss_choices()), cls
        if cls.penalty is not None:
            assert train_fields[cls.penalty.coef_field].default == cls.penalty.default_coef, cls
