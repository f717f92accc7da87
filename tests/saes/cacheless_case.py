"""Harvest a cache, then train the same SAEs from it and straight from the model (test_cacheless.py).

Not collected by pytest (no test_ prefix). Usage: cacheless_case.py MODEL_DIR CORPUS WORK_DIR.
One thread, so that the forward passes and the training steps of the two runs are bitwise
comparable: the cacheless run must equal the cache run row for row and bit for bit.
"""

from __future__ import annotations

import sys

import torch

HOOKS = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")


def main() -> None:
    torch.set_num_threads(1)
    from harvesting.harvest import HarvestConfig, harvest
    from saes import TrainConfig, train

    model, corpus, work = sys.argv[1:4]
    harvest(HarvestConfig(model=model, corpus=corpus, hooks=HOOKS, tokens=2500, context_length=32, batch_size=4,
                          out=f"{work}/acts", device="cpu", progress=False, seed=3))
    common = dict(hook=HOOKS, arch=("topk", "relu"), k=(4,), expansion=(2,), batch_size=64, shuffle_buffer=320,
                  checkpoint_every=0, progress=False, device="cpu", init_sample_tokens=200, heldout_fraction=0.1,
                  epochs=2, precision="float32", seed=5)
    train(TrainConfig(cache=f"{work}/acts", out=f"{work}/from_cache", **common))
    train(TrainConfig(model=model, corpus=corpus, tokens=2500, context_length=32, harvest_batch_size=4, corpus_seed=3,
                      out=f"{work}/from_model", **common))


if __name__ == "__main__":
    main()
