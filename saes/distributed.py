"""Data-parallel training: what each rank does (the process group itself is `workbench.distributed`).

Every rank holds every SAE (or, with `--feature-parallel N`, its 1/N of each SAE's features:
saes/feature_parallel.py) and reads its slice of the same global batch. Losses are divided by
the global batch's variance, so summing each rank's gradients gives exactly the one-process
gradient of the global batch (up to float summation order); the trainer sums gradients with one
all-reduce per SAE instead of wrapping modules in DDP, which keeps the decoder-gradient
projection, clipping and Adam identical to the single-process step.

Selection rules that look at the whole batch (BatchTopK, Feature Choice, Mutual Choice) select
within each rank's slice: with W ranks, each rank allocates its k*B/W budget over its B/W
tokens. TopK, ReLU, JumpReLU and MP are per-token and therefore match the one-process run.
"""

from workbench.distributed import DistContext, setup_distributed

__all__ = ["DistContext", "setup_distributed"]
