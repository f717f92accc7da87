"""One data-parallel training run, started by test_ddp.py (under torchrun, or alone for 1 process).

Not collected by pytest (no test_ prefix). Usage: ddp_case.py OUT_DIR ARCH...
Each rank writes its final (unfolded) weights to OUT_DIR/rank<r>.safetensors, so the test can
check that ranks stay identical and that they equal the one-process run.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from saes import TensorSource, TrainConfig, Trainer
from saes.synthetic import random_dictionary, sparse_activations


def main() -> None:
    torch.set_num_threads(1)
    out, archs = sys.argv[1], tuple(sys.argv[2:])
    x = sparse_activations(random_dictionary(48, 16, seed=1), 2_600, active=3, seed=2, bias=torch.full((16,), 2.0))
    # fp32 selection: with bf16 (the default on CPUs with bf16 units) a near-tie at the selection
    # boundary could flip between the two summation orders, and the runs would fork for that reason.
    cfg = TrainConfig(arch=archs, k=(3,), expansion=(2,), batch_size=256, out=out, progress=False,
                      checkpoint_every=0, heldout_fraction=0.02, init_sample_tokens=512, dead_tokens=512,
                      l0_coef=0.1, l1_coef=0.3, multi_topk=True, precision="float32")
    trainer = Trainer(cfg, TensorSource(x))
    try:
        trainer.train()
        tensors = {}
        for s in trainer.slots:
            for k, v in s.sae.state_dict().items():
                tensors[f"{s.name}/{k}"] = v.detach().contiguous()
            tensors[f"{s.name}/fired_total"] = s.fired_total
        save_file(tensors, f"{out}/rank{trainer.dist.rank}.safetensors")
        print(f"rank {trainer.dist.rank} of {trainer.dist.world_size}: steps {trainer.step}", flush=True)
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
