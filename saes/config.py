"""Configs: what one SAE is (`SAEConfig`, saved in its cfg.json) and how a run trains them (`TrainConfig`).

Both are dataclasses so that `sae train` flags are generated from the same fields the Python API
takes (workbench.config.add_config_args), and the resolved values are written next to the
outputs. `TrainConfig` describes a *sweep*: every combination of hook point, architecture, k and
expansion becomes one SAE, and all of them are fed by one read of the cache.

Nothing here knows an architecture by name: which ones exist, which use k or a penalty, which
aux losses they take and which fields they read is asked of their classes (saes.registry).
Field metadata the CLI generator reads: `help`, `choices` (a tuple, or a zero-argument callable
returning one, so a registry is read when the parser is built), `flag` (the primary flag when it
is not the field name's) and `aliases` (old flag spellings, accepted and hidden).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saes.architectures import DEFAULT_ARCHITECTURE
from saes.registry import architecture_classes, architectures, aux_loss_choices, sae_class
from workbench.errors import WorkbenchError, choices_error

# The built-in architectures and aux losses, derived from the registry (which may grow later:
# validation always asks the registry itself).
ARCHITECTURES = architectures()
AUX_LOSSES = aux_loss_choices()
SAE_FORMAT_VERSION = 1


@dataclass
class SAEConfig:
    """Everything needed to rebuild one SAE's forward pass (plus provenance), stored as cfg.json.

    Architecture-specific fields are ignored by architectures that do not use them, but are kept
    so that a cfg.json always reads the same way.
    """

    architecture: str
    d_in: int
    num_features: int
    k: int = 32
    hook: str = ""
    model_id: str = ""
    # BatchTopK / Feature Choice / Mutual Choice: which rule `encode` applies outside training.
    # "threshold" (the saved per-feature threshold; one token at a time, like a JumpReLU) or
    # "batch" (the training rule over the whole batch given to `encode`).
    inference: Literal["threshold", "batch"] = "threshold"
    # Feature Choice: per-feature capacities within a batch.
    capacity: Literal["uniform", "zipf"] = "uniform"
    zipf_exponent: float = 1.0
    # JumpReLU: width of the rectangle kernel of the threshold's straight-through estimator, and
    # the threshold every feature starts from (in units of the normalised input).
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.1
    # Normalisation folded into the weights at save time: the SAE was trained on
    # `input_scale * x`; the saved weights take raw x (DESIGN.md). Kept for the record.
    input_scale: float = 1.0
    # Whitening folded into the weights at save time (saes.whitening): "none", "pca" or "zca". With
    # one, the saved weights still take raw x, but decoder rows are the atoms in the model's units
    # (not unit-norm) and codes keep their whitened-space magnitudes.
    whiten: str = "none"
    dtype: str = "float32"
    format_version: int = SAE_FORMAT_VERSION
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cls = sae_class(self.architecture)
        if self.d_in < 1 or self.num_features < 1:
            raise WorkbenchError(f"d_in ({self.d_in}) and num_features ({self.num_features}) must be >= 1")
        cls.check_config(self)
        if self.inference not in ("threshold", "batch"):
            raise choices_error("inference rule", self.inference, ("threshold", "batch"))
        if self.capacity not in ("uniform", "zipf"):
            raise choices_error("capacity", self.capacity, ("uniform", "zipf"))
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            raise WorkbenchError(
                f"jumprelu_bandwidth ({self.jumprelu_bandwidth}) and jumprelu_init_threshold "
                f"({self.jumprelu_init_threshold}) must be > 0"
            )
        if self.format_version > SAE_FORMAT_VERSION:
            raise WorkbenchError(
                f"this SAE was saved in format version {self.format_version}; this workbench reads up to "
                f"{SAE_FORMAT_VERSION}: upgrade sae-workbench"
            )


def _h(text: str, **more: Any) -> dict[str, Any]:
    return {"help": text, **more}


def _used_by(name: str) -> str:
    """The built-in architectures reading SAEConfig field `name`, for help texts."""
    return ", ".join(c.architecture for c in architecture_classes() if name in c.hyperparameters)


def _penalty(coef_field: str) -> tuple[float, dict[str, Any]]:
    """Default and metadata of a penalty-coefficient field, from the architectures declaring it."""
    users = [c for c in architecture_classes() if c.penalty is not None and c.penalty.coef_field == coef_field]
    p = users[0].penalty
    assert p is not None
    return p.default_coef, _h(f"{', '.join(c.architecture for c in users)}: {p.help}")


_L1_DEFAULT, _L1_META = _penalty("l1_coef")
_L0_DEFAULT, _L0_META = _penalty("l0_coef")


@dataclass
class TrainConfig:
    """One training run: data, the SAEs to train on it, optimisation, health, checkpoints.

    Zero (or empty) in a field marked "auto" means: derive it from the data and the SAE (the
    resolved value is what gets saved).
    """

    # ---- data
    cache: str = field(default="", metadata=_h("activation cache directory (from `sae harvest`)"))
    # ---- data straight from a model, no cache (harvesting.stream, harvesting.shuffle_buffer)
    model: str = field(default="", metadata=_h(
        "train straight from this model's forward passes, no cache (offline alias, hub id or local directory; "
        "with --corpus and --tokens, as `sae harvest` takes them)"))
    corpus: str = field(default="", metadata=_h("with --model: the corpus, as `sae harvest --corpus` (default wiki-vital)"))
    tokens: int = field(default=0, metadata=_h("with --model: tokens harvested per epoch, held-out split included (0 = 1000000)"))
    context_length: int = field(default=0, metadata=_h("with --model: tokens per context (0 = 128, as `sae harvest`)"))
    harvest_batch_size: int = field(default=0, metadata=_h("with --model: contexts per forward pass (0 = 16, as `sae harvest --batch-size`)"))
    corpus_seed: int = field(default=0, metadata=_h("with --model: seed of the document order (`sae harvest --seed`)"))
    model_dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata=_h("with --model: dtype the model runs in"))
    shuffle_buffer: int = field(default=0, metadata=_h(
        "rows of the seeded shuffle buffer the stream passes through (0 = 131072 with --model; with --cache, 0 keeps "
        "the cache's own epoch shuffle, and a value reads the cache in harvest order through the buffer: the batches "
        "of a --model run with the same value)"))
    hook: tuple[str, ...] = field(default=(), metadata=_h("hook point(s) to train on; empty = the cache's only hook",
                                                          flag="--hooks", aliases=("--hook",)))
    out: str = field(default="", metadata=_h("run directory (default: <cache parent>/saes/<cache name>)"))
    batch_size: int = field(default=4096, metadata=_h("tokens per optimiser step (global, over all ranks)"))
    epochs: int = field(default=1, metadata=_h("passes over the training split"))
    max_tokens: int = field(default=0, metadata=_h("stop after this many training tokens (0 = all epochs)"))
    heldout_fraction: float = field(default=0.01, metadata=_h("fraction of the cache kept out of training for evaluation"))
    normalize: bool = field(default=True, metadata=_h("scale inputs to mean norm sqrt(d_in) (folded into the saved weights)"))
    seed: int = field(default=0, metadata=_h("seed for initialisation and data order"))
    # ---- SAEs (every combination of hook x arch x k x expansion is one SAE)
    arch: tuple[str, ...] = field(default=(DEFAULT_ARCHITECTURE,), metadata=_h("architecture(s) to train", choices=architectures, what="architecture"))
    k: tuple[int, ...] = field(default=(32,), metadata=_h(
        "active features per token, exactly or on average (penalty-trained architectures start at L0 about k; "
        "architectures without k ignore it)"))
    expansion: tuple[int, ...] = field(default=(8,), metadata=_h("number of features = expansion x d_in"))
    inference: Literal["threshold", "batch"] = field(
        default="threshold",
        metadata=_h(f"{_used_by('inference')}: rule outside training, a learned threshold or the batch rule")
    )
    capacity: Literal["uniform", "zipf"] = field(
        default="uniform", metadata=_h(f"{_used_by('capacity')}: capacities of k*B/F tokens per feature, or Zipf by demand rank")
    )
    zipf_exponent: float = field(default=1.0, metadata=_h("exponent of the Zipf law (capacities and aux_zipf targets)"))
    init_b_dec: Literal["geometric_median", "mean", "zeros"] = field(
        default="geometric_median", metadata=_h("initial decoder bias, from a sample of the training data")
    )
    init_sample_tokens: int = field(default=16384, metadata=_h("tokens read to estimate b_dec, the input scale and a whitening"))
    whiten: Literal["none", "pca", "zca"] = field(default="none", metadata=_h(
        "whiten inputs before training, folded into the saved weights (saes.whitening): pca (principal axes, "
        "unit variance each, as Donhauser et al.) or zca (the same, rotated back to the input axes)"))
    whiten_source: str = field(default="init", metadata=_h(
        "where the whitening's mean and covariance come from: init (the initialisation sample) or a control cache "
        "directory with the same hook points (its first --init-sample-tokens rows)"))
    whiten_eps: float = field(default=1e-4, metadata=_h(
        "added to every covariance eigenvalue before whitening, relative to their mean (keeps near-empty "
        "directions from being blown up into noise)"))
    # ---- optimisation
    lr: float = field(default=0.0, metadata=_h("Adam learning rate (0 = auto: 8e-4 / sqrt(F / 2^14))"))
    adam_betas: tuple[float, ...] = field(default=(0.9, 0.999), metadata=_h("Adam beta1 beta2"))
    adam_eps: float = field(default=6.25e-10, metadata=_h("Adam epsilon"))
    warmup_fraction: float = field(default=0.01, metadata=_h("fraction of steps with a linear learning-rate warm-up"))
    # No decay by default: on the 1M-token cache a decay over the last 20% cost held-out FVU at 0.4M, 1M and
    # 4M training tokens alike (benchmarks/bench_schedule.py, table in benchmarks/RESULTS.md).
    decay: Literal["linear", "cosine", "none"] = field(default="none", metadata=_h("learning-rate decay to 0 at the end"))
    decay_fraction: float = field(default=0.2, metadata=_h("fraction of steps (at the end) over which the rate decays"))
    grad_clip: float = field(default=1.0, metadata=_h("clip each SAE's gradient norm to this (0 = off)"))
    precision: Literal["auto", "float32", "bfloat16"] = field(
        default="auto",
        metadata=_h("encoder matmul dtype for choosing active features (values stay fp32); auto = bf16 on CUDA "
                    "and on CPUs with bf16 units"),
    )
    compile: bool = field(default=False, metadata=_h("torch.compile the dense tensor code of a step (architectures with a dense phase)"))
    device: str = field(default="auto", metadata=_h("cpu, cuda, cuda:N, or auto (cuda when present; LOCAL_RANK under torchrun)"))
    prefetch: int = field(default=-1, metadata=_h(
        "batches the cache reader gathers ahead in a background thread (-1 = auto: 2 on CUDA, where each step "
        "ends in a host sync, 0 on a CPU, where the step already uses every core); the data order is the same"))
    # ---- losses and health
    aux_loss: str = field(default="auto", metadata=_h(
        "auxiliary loss against dead/under-used features; auto = each architecture's own default", choices=aux_loss_choices,
        what="aux loss"))
    aux_coef: float = field(default=1 / 32, metadata=_h("coefficient of the AuxK / aux_zipf loss"))
    k_aux: int = field(default=0, metadata=_h("features the aux loss may use per token (0 = auto: d_in / 2)"))
    dead_tokens: int = field(default=0, metadata=_h("a feature not fired in this many tokens is dead (0 = auto: min(10M, run/10))"))
    multi_topk: bool = field(default=False, metadata=_h("add the Multi-TopK term L(4k)/8 (top-k and batch top-k selection)"))
    l1_coef: float = field(default=_L1_DEFAULT, metadata=_L1_META)
    l0_coef: float = field(default=_L0_DEFAULT, metadata=_L0_META)
    sparsity_warmup_fraction: float = field(default=0.05, metadata=_h("linear warm-up of the L1/L0 coefficient"))
    jumprelu_bandwidth: float = field(default=0.05, metadata=_h(
        f"{_used_by('jumprelu_bandwidth')}: straight-through kernel width"))
    jumprelu_init_threshold: float = field(default=0.1, metadata=_h(
        f"{_used_by('jumprelu_init_threshold')}: initial threshold without a data sample (the trainer starts at L0 ~ k)"))
    threshold_ema: float = field(default=0.99, metadata=_h(
        f"{_used_by('inference')}: decay of the running inference threshold (recalibrated on the last batches at the end)"))
    # ---- bookkeeping
    log_every: int = field(default=10, metadata=_h("steps between metric lines in metrics.jsonl"))
    checkpoint_every: int = field(default=100, metadata=_h("steps between checkpoints (0 = only at the end)"))
    resume: bool = field(default=True, metadata=_h("continue from the last checkpoint in --out when there is one"))
    eval_tokens: int = field(default=0, metadata=_h("held-out tokens evaluated at the end (0 = the whole held-out split)"))
    progress: bool = field(default=True, metadata=_h("show a progress bar"))
    verify: bool = field(default=False, metadata=_h("check every shard's checksum before training (as `sae cache verify`); "
                                                   "sizes and headers are always checked"))
    feature_parallel: int = field(default=1, metadata=_h(
        "split each SAE's features (and their Adam state) over this many ranks of a torchrun launch: the "
        "processes form (processes / N) data-parallel replicas of N consecutive ranks (TopK; see saes.feature_parallel)"))
    deterministic: Literal["auto", "on", "off"] = field(default="auto", metadata=_h(
        "bit-identical GPU kernels (sorted reductions, no atomics; slower weight gradients): auto = on whenever "
        "checkpoints are written, so a resumed run equals an uninterrupted one"))

    def __post_init__(self) -> None:
        _check_number_types(self)
        self.hook = tuple(self.hook)
        self.arch = tuple(self.arch)
        self.k = tuple(int(v) for v in self.k)
        self.expansion = tuple(int(v) for v in self.expansion)
        self.adam_betas = tuple(float(v) for v in self.adam_betas)
        for a in self.arch:
            sae_class(a)  # names the valid choices when `a` is not one
        if self.aux_loss not in aux_loss_choices():
            raise choices_error("aux loss", self.aux_loss, aux_loss_choices())
        for name in ("arch", "k", "expansion"):
            if not getattr(self, name):
                raise WorkbenchError(f"--{name} needs at least one value")
        checks = {
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "max_tokens": self.max_tokens >= 0,
            "log_every": self.log_every >= 1,
            "checkpoint_every": self.checkpoint_every >= 0,
            "k_aux": self.k_aux >= 0,
            "dead_tokens": self.dead_tokens >= 0,
            "lr": self.lr >= 0,
            "grad_clip": self.grad_clip >= 0,
            "aux_coef": self.aux_coef >= 0,
            "init_sample_tokens": self.init_sample_tokens >= 1,
            "prefetch": self.prefetch >= -1,
            "eval_tokens": self.eval_tokens >= 0,
            "feature_parallel": self.feature_parallel >= 1,
            "tokens": self.tokens >= 0,
            "context_length": self.context_length >= 0,
            "harvest_batch_size": self.harvest_batch_size >= 0,
            "shuffle_buffer": self.shuffle_buffer >= 0,
            "heldout_fraction": 0 <= self.heldout_fraction < 1,
            "warmup_fraction": 0 <= self.warmup_fraction <= 1,
            "decay_fraction": 0 <= self.decay_fraction <= 1,
            "sparsity_warmup_fraction": 0 <= self.sparsity_warmup_fraction <= 1,
            "threshold_ema": 0 <= self.threshold_ema < 1,
            "l1_coef": self.l1_coef >= 0,
            "l0_coef": self.l0_coef >= 0,
            "zipf_exponent": self.zipf_exponent > 0,
            "adam_eps": self.adam_eps > 0,
            "jumprelu_bandwidth": self.jumprelu_bandwidth > 0,
            "jumprelu_init_threshold": self.jumprelu_init_threshold >= 0,
            "whiten_eps": self.whiten_eps >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise WorkbenchError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is out of range")
        for name in ("k", "expansion"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad:
                raise WorkbenchError(f"--{name} values must be >= 1; got {bad}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise WorkbenchError(f"--adam-betas needs two values in [0, 1); got {list(self.adam_betas)}")
        _check_data_source(self)
        if self.whiten not in ("none", "pca", "zca"):
            raise choices_error("whitening", self.whiten, ("none", "pca", "zca"))
        if self.whiten_source != "init" and not Path(self.whiten_source).is_dir():
            raise WorkbenchError(f"--whiten-source {self.whiten_source!r} is neither 'init' nor a cache directory")
        if self.whiten != "none":
            from saes.whitening import check_foldable  # it builds SAEs from SAEConfig: imported late

            check_foldable(self.arch, self.whiten)

    def sae_grid(self, hooks: list[str]) -> list[tuple[str, str, int, int]]:
        """(hook, arch, k, expansion) of every SAE this run trains, in a fixed order.

        An architecture without k (`uses_k` False) appears once per (hook, expansion), with k 0,
        whatever --k says.
        """
        out: list[tuple[str, str, int, int]] = []
        for hook, arch, k, exp in itertools.product(hooks, self.arch, self.k, self.expansion):
            k = sae_class(arch).sweep_k(k)
            if (hook, arch, k, exp) not in out:
                out.append((hook, arch, k, exp))
        return out

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _check_data_source(cfg: TrainConfig) -> None:
    """A cache or a model, not both; the stream's fields only with --model, where they mean something."""
    if cfg.cache and cfg.model:
        raise WorkbenchError(f"give --cache DIR or --model M, not both (--cache {cfg.cache!r}, --model {cfg.model!r})")
    if not cfg.model:
        defaults = TrainConfig.__dataclass_fields__
        stray = [n for n in ("corpus", "tokens", "context_length", "harvest_batch_size", "corpus_seed", "model_dtype")
                 if getattr(cfg, n) != defaults[n].default]
        if stray:
            raise WorkbenchError(f"--{stray[0].replace('_', '-')} only applies with --model (training from a model's "
                                 f"forward passes); a cache already fixes it")
    if 0 < cfg.shuffle_buffer < cfg.batch_size:
        raise WorkbenchError(f"--shuffle-buffer {cfg.shuffle_buffer} must hold at least one batch "
                             f"(--batch-size {cfg.batch_size})")


def _check_number_types(cfg: object) -> None:
    """Numbers must be finite numbers of the field's kind: a value of another type (argparse turns
    `--flag=--` into a list) or a NaN/inf would otherwise fail far from the flag that caused it."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}.get(str(f.type))
        if kind not in (int, float):
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
        if ok and kind is float and not math.isfinite(v):
            raise WorkbenchError(f"--{f.name.replace('_', '-')} {v!r} is out of range (it must be a finite number)")
        if not ok:
            raise WorkbenchError(f"--{f.name.replace('_', '-')} needs {'an integer' if kind is int else 'a number'}; got {v!r}")


def sae_name(hook: str, arch: str, k: int, expansion: int) -> str:
    """Directory name of one SAE inside a run: readable and unique within the grid (the class decides)."""
    return sae_class(arch).run_name(hook, k, expansion)


# Fields of TrainConfig that may differ between the run that wrote a checkpoint and the one
# resuming it (they do not change what is computed).
RESUMABLE_FIELDS = ("resume", "progress", "log_every", "checkpoint_every", "device", "eval_tokens", "out", "cache",
                    "verify", "deterministic", "prefetch")
