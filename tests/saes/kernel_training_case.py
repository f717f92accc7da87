"""Train a tiny TopK SAE a few steps and save its weights after every step; run by
test_kernel_training_agreement.py in fresh processes (the Triton interpreter must be chosen
before triton is imported), once per kernel backend.

Usage: kernel_training_case.py OUT.safetensors DEVICE STEPS [DETERMINISTIC: auto|on|off]
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from saes import TensorSource, TrainConfig, Trainer
from saes.kernels import backend, is_deterministic
from saes.synthetic import random_dictionary, sparse_activations


def main() -> None:
    out, device, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    det = sys.argv[4] if len(sys.argv) > 4 else "auto"
    torch.set_num_threads(1)
    d = 40 if device == "cpu" else 256
    x = sparse_activations(random_dictionary(96, d, seed=1), 64 * (steps + 4), active=4, seed=2,
                           bias=torch.full((d,), 1.5))
    cfg = TrainConfig(arch=("topk",), k=(5,), expansion=(2,), batch_size=64, out=sys.argv[1] + ".run",
                      progress=False, checkpoint_every=0, heldout_fraction=0.0, max_tokens=64 * steps,
                      init_sample_tokens=256, dead_tokens=128, aux_coef=0.5, k_aux=7, multi_topk=True,
                      precision="float32", device=device, lr=3e-3, warmup_fraction=0.0, decay="none",
                      deterministic=det)
    trace: dict[str, torch.Tensor] = {}

    def record(trainer: Trainer, step: int) -> None:
        trace[f"{step}/deterministic"] = torch.tensor(int(is_deterministic()))
        for name, p in trainer.slots[0].sae.state_dict().items():
            trace[f"{step}/{name}"] = p.detach().cpu().clone()

    t = Trainer(cfg, TensorSource(x), callback=record)
    print("backend", backend(t.slots[0].sae.W_dec), flush=True)
    try:
        t.train()
    finally:
        t.close()
    save_file(trace, out)


if __name__ == "__main__":
    main()
