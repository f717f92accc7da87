"""Host reads of device values in a training step: each one is a GPU synchronisation on CUDA.

Counted on the CPU with a TorchFunctionMode over the Tensor methods that hand a value to Python
(item, tolist, bool/int/float, nonzero): the count is the same on any device, and on CUDA each
stalls the host until the GPU has caught up, which at small widths costs more than the step's
kernels (issue 21: F 4608 ran at 0.45x the plain dense loop).
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.overrides import TorchFunctionMode

from saes import TensorSource, TrainConfig
from saes.trainer import Trainer

HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
              torch.Tensor.__float__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.cpu, torch.Tensor.numpy}


class CountHostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.calls[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def reads_in_step(trainer: Trainer, batches) -> collections.Counter[str]:
    batch = next(batches)
    with CountHostReads() as mode:
        trainer.train_step(batch)
    trainer.step += 1
    trainer.tokens += trainer.cfg.batch_size
    return mode.calls


def test_topk_step_reads_one_value_until_features_can_be_dead(tmp_path):
    """Before `dead_tokens` tokens no feature can be dead (a feature's tokens-since-fired never
    exceeds the tokens trained), so the AuxK dead list (a nonzero) is not built: the step's one
    host read is the non-finite check. Once features can die, the list is built again."""
    x = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(arch=("topk",), k=(4,), expansion=(16,), batch_size=128, out=str(tmp_path / "run"),
                      progress=False, checkpoint_every=0, heldout_fraction=0.0, device="cpu", epochs=1,
                      dead_tokens=512, aux_loss="auxk")
    trainer = Trainer(cfg, TensorSource(x))
    batches = trainer.batches()
    reads_in_step(trainer, batches)  # the first step may set things up
    for _ in range(3):  # tokens 128 .. 384 < dead_tokens
        assert reads_in_step(trainer, batches) == {"tolist": 1}
    for _ in range(3):
        reads_in_step(trainer, batches)
    assert trainer.tokens >= 512 and reads_in_step(trainer, batches)["nonzero"] == 1


class OnCuda(CountHostReads):
    """Counts host reads while the given tensors answer `is_cuda` / `device` as if they lived on a GPU
    (their values stay on the CPU, so a check that still runs there can be seen to run)."""

    IS_CUDA, DEVICE = torch.Tensor.is_cuda.__get__, torch.Tensor.device.__get__

    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__()
        self.ids = {id(t) for t in tensors}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if args and id(args[0]) in self.ids:
            if func == self.IS_CUDA:
                return True
            if func == self.DEVICE:
                return torch.device("cuda", 0)
        return super().__torch_function__(func, types, args, kwargs)


def test_selector_checks_read_nothing_back_from_a_gpu():
    """`encode` checks its selectors on every step: the AuxK TopK's feature ids (the dead list, new
    each step) and FeatureChoice's capacities. On CUDA the range checks are device-side asserts, not
    host reads; they still fire on a bad value. On the CPU the check reads the values and names them."""
    from saes.kernels.selectors import FeatureChoice, TopK, check_selector
    from workbench.errors import WorkbenchError

    dead = torch.tensor([3, 0, 7])
    capacity = torch.full((8,), 2)
    with OnCuda(dead, capacity) as mode:
        check_selector(TopK(2, features=dead), 16, 8)
        check_selector(FeatureChoice(capacity), 16, 8)
    assert mode.calls == {}, mode.calls
    bad, below, neg = torch.tensor([3, 8]), torch.tensor([-1, 3]), torch.tensor([2, 2, -1, 2, 2, 2, 2, 2])
    for sel in (TopK(1, features=bad), TopK(1, features=below), FeatureChoice(neg)):
        with OnCuda(bad, below, neg) as mode, pytest.raises(RuntimeError):  # on a CPU the assert is synchronous
            check_selector(sel, 16, 8)
        assert mode.calls == {}, mode.calls
    with pytest.raises(WorkbenchError, match=r"TopK features must be feature ids in \[0, 8\)"):
        check_selector(TopK(1, features=bad), 16, 8)
    with pytest.raises(WorkbenchError, match="FeatureChoice capacity must be >= 0"):
        check_selector(FeatureChoice(neg), 16, 8)
