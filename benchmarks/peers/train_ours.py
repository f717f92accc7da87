"""Worker: the workbench's TopK SAE, trained by the workbench trainer (`saes.Trainer`), run in our venv.

The trainer reads its batches through the cache reader's interface; `FileOrder` serves the
batches file's rows in the file's order (the order every library gets), epoch 1 of 1. The
recipe is the trainer's own defaults (geometric-median b_dec, input scaled to mean norm sqrt(d),
Adam, 1% warm-up and no decay, gradient clip 1, unit decoder rows, AuxK,
`--precision auto`) except the learning rate, which the benchmark sets for all libraries alike.
Timed: `Trainer.train()` from its call to the callback after the last step (the final
checkpoint, held-out evaluation and save come after and are not timed).
"""

from __future__ import annotations

import shutil
import tempfile
import time

import torch

import worker_io
from saes import TensorSource, TrainConfig, Trainer, load_sae


class FileOrder(TensorSource):
    """The batches file behind the cache reader's interface: training batches in the file's order."""

    def __init__(self, data) -> None:
        super().__init__(data.rows, heldout=data.heldout)
        self.file = data

    def num_batches(self, batch_size: int, split: str = "train", heldout_fraction: float = 0.01,
                    drop_last: bool = True) -> int:
        if split != "train":
            return super().num_batches(batch_size, split, heldout_fraction, drop_last)
        assert batch_size == self.file.batch_size
        return self.file.num_batches

    def batches(self, hooks, batch_size, *, split="train", start_batch=0, **kw):
        if split != "train":
            yield from super().batches(hooks, batch_size, split=split, start_batch=start_batch, **kw)
            return
        assert batch_size == self.file.batch_size and kw.get("world_size", 1) == 1
        for b in range(start_batch, self.file.num_batches):
            yield {h: self.file.batch(b) for h in hooks}


def main() -> None:
    args, data = worker_io.start("workbench", variants=("auto", "float32"))
    p = data.params
    d = data.rows.shape[1]
    out = tempfile.mkdtemp(prefix="peers_ours_", dir=args.out)
    cfg = TrainConfig(arch=("topk",), k=(p["k"],), expansion=(p["num_features"] // d,), batch_size=p["batch_size"],
                      epochs=1, out=out, progress=False, checkpoint_every=0, seed=p["seed"], heldout_fraction=0.0,
                      resume=False, device="cpu", lr=p["lr"], precision=args.variant)
    ends: list[float] = []
    trainer = Trainer(cfg, FileOrder(data), callback=lambda t, step: ends.append(time.perf_counter()))
    t0 = time.perf_counter()
    trainer.train()
    seconds = ends[-1] - t0
    sae = load_sae(out)
    w = sae.weight_tensors()
    weights = {"W_enc": w["W_enc"].t(), "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    with torch.no_grad():
        x = data.heldout[:worker_io.CHECK_ROWS]
        recon = sae.decode(sae.encode(x))
    worker_io.finish(args, data, seconds=seconds, weights=weights, library_recon=recon, version="this checkout",
                     recipe=(f"saes.Trainer defaults, precision {args.variant} ({trainer.matmul_dtype or torch.float32} "
                             f"selection), lr {p['lr']:.3g}, warm-up {cfg.warmup_fraction:.0%}, "
                             f"{_decay(cfg)}, clip {cfg.grad_clip}, AuxK"),
                     extra={"trainer_steps": trainer.step})
    shutil.rmtree(out, ignore_errors=True)


def _decay(cfg) -> str:
    return "no decay" if cfg.decay == "none" else f"{cfg.decay} decay over the last {cfg.decay_fraction:.0%}"


if __name__ == "__main__":
    main()
