"""The interface every SAE architecture shares, and what they have in common.

Parameters: `enc_weight [F, d]` (the encoder stored transposed: `W_enc` is its `[d, F]` view,
which is the saved layout, while the `[F, d]` storage is what the sparse kernels read fastest),
`b_enc [F]`, `W_dec [F, d]`, `b_dec [d]`. Every architecture encodes to `SparseCodes` through
`saes.kernels.encode` (one dense matmul, then a selector) and decodes through `sparse_decode`,
so decoder work scales with the active features, on CPU (torch path) and CUDA (Triton) alike.

Training goes through `training_step(x, ctx)`, which returns the differentiable loss and the
statistics the trainer keeps (firing counts); the trainer owns the optimiser, the decoder-norm
constraint and the health bookkeeping so every architecture gets the same treatment.

Each architecture also declares its *policy* as class attributes (see "policy" below): whether
it uses k, which sparsity penalty it trains with, which aux losses it takes, whether it has a
batch rule besides its threshold rule, which config fields it reads. The trainer, the configs
and the CLI read these and never test an architecture's name, so a new architecture is one new
file in `saes/architectures/` plus one line in its `__init__.py` (or `saes.registry.register`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from saes.kernels import SparseCodes, TopK, encode, sparse_decode
from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # only for annotations: architectures never import the configs (no import loop)
    from saes.config import SAEConfig


@dataclass
class StepContext:
    """What one training step of one SAE needs to know beyond its input batch.

    `denom` is the sum over the *global* batch (all ranks) of ||x - mean(x)||^2, so that a loss
    summed over a rank's tokens and divided by it adds up, over ranks, to the full-batch FVU: the
    gradients are then summed (not averaged) across ranks, and equal the one-process gradient.
    """

    denom: Tensor
    n_tokens: int
    step: int = 0
    total_steps: int = 1
    matmul_dtype: torch.dtype | None = None
    dead: Tensor | None = None  # ids of dead features (AuxK)
    usage: Tensor | None = None  # per-feature firing rate per token, running average
    aux_loss: str = "none"  # "auxk", "zipf" or "none" (resolved by the trainer)
    aux_coef: float = 1 / 32
    k_aux: int = 256
    multi_topk: bool = False
    sparsity_coef: float = 0.0  # L1 (ReLU) / L0 (JumpReLU) coefficient, warm-up applied
    zipf_exponent: float = 1.0
    threshold_ema: float = 0.99
    # Reduce a tensor over ranks in place ("sum" or "min"); identity in a single process.
    reduce: Callable[[Tensor, str], Tensor] = field(default=lambda t, op: t)

    @property
    def token_var(self) -> Tensor:
        """Mean per-token variance of the global batch: converts per-token penalties to FVU units."""
        return self.denom / self.n_tokens


@dataclass(frozen=True)
class Penalty:
    """A sparsity penalty an architecture trains with instead of a fixed k.

    `coef_field` names the `TrainConfig` field holding its coefficient (in per-token sse units);
    `default_coef` is that field's default (TrainConfig reads it from here). The trainer warms
    the coefficient up linearly over `sparsity_warmup_fraction` of the run.
    """

    name: str  # "l1", "l0": as logged
    coef_field: str
    default_coef: float
    help: str


@dataclass
class StepOutput:
    """One SAE's result for one batch: the loss to minimise and detached statistics."""

    loss: Tensor
    sse: Tensor  # sum over this rank's tokens of ||x - x_hat||^2 (detached)
    fired: Tensor  # [F] number of tokens (this rank) on which each feature was active (value > 0)
    terms: dict[str, Tensor] = field(default_factory=dict)  # detached loss terms, for logs


class SparseAutoencoder(nn.Module):
    """Base class: shared parameters, decode, save/load hooks, the decoder-norm constraint."""

    # ---- policy: what the trainer, the configs and the CLI ask the class (never its name)
    # The name in cfg.json, `--arch` and run directory names.
    architecture: ClassVar[str] = ""
    # k sets the sparsity (or, for a penalty-trained architecture, its starting L0). False: the
    # sweep trains one SAE per hook x expansion whatever --k says, named without "-k".
    uses_k: ClassVar[bool] = True
    # The sparsity penalty trained with, if any (its coefficient is a TrainConfig field).
    penalty: ClassVar[Penalty | None] = None
    # Aux losses this architecture can train with (besides "none"), and the one "auto" picks.
    aux_losses: ClassVar[tuple[str, ...]] = ()
    default_aux: ClassVar[str] = "none"
    # Run-wide aux losses it skips silently instead of refusing (it has nothing for them to act
    # on, e.g. no k-sparse pre-activations to revive dead features with), so one sweep can mix it
    # with architectures that use them.
    skipped_aux_losses: ClassVar[tuple[str, ...]] = ()
    # Has a batch-level training rule besides a per-token threshold rule (`encode_batch`): the
    # held-out evaluation then reports both.
    threshold_inference: ClassVar[bool] = False
    # SAEConfig fields it reads besides d_in / num_features / k (its own hyper-parameters).
    hyperparameters: ClassVar[tuple[str, ...]] = ()
    # Decoder rows kept unit-norm during training (the gradient's parallel part is removed).
    unit_norm_decoder: ClassVar[bool] = True
    # Names of extra tensors saved in sae.safetensors besides the four weights (e.g. threshold).
    extra_tensors: ClassVar[tuple[str, ...]] = ()
    # Its training step is per-token top-k over one encoder matmul, which `saes.feature_parallel`
    # can split across ranks by features (`--feature-parallel`); the layout refuses the others.
    feature_parallel: ClassVar[bool] = False

    @classmethod
    def sweep_k(cls, k: int) -> int:
        """The k this architecture trains with for a sweep value `k` (0: it has no k)."""
        return k if cls.uses_k else 0

    @classmethod
    def run_name(cls, hook: str, k: int, expansion: int) -> str:
        """Directory of one SAE inside a run: readable and unique within the sweep grid."""
        ks = f"-k{k}" if cls.uses_k and k else ""
        return f"{hook}/{cls.architecture}{ks}-x{expansion}"

    @classmethod
    def check_config(cls, cfg: "SAEConfig") -> None:
        """Refuse a config this architecture cannot run (field-level checks live in SAEConfig)."""
        if cls.uses_k and not 1 <= cfg.k < cfg.num_features:
            raise WorkbenchError(
                f"k={cfg.k} must be at least 1 and below the number of features ({cfg.num_features}) "
                f"for architecture {cls.architecture!r}"
            )

    def __init__(self, cfg: SAEConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if cfg.architecture != self.architecture:
            raise WorkbenchError(f"{type(self).__name__} got a config for architecture {cfg.architecture!r}")
        self.cfg = cfg
        f, d = cfg.num_features, cfg.d_in
        self.enc_weight = nn.Parameter(torch.empty(f, d, device=device, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(f, device=device, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(f, d, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))
        self.reset_parameters(generator)

    # ------------------------------------------------------------------ what it is (print, notebooks)

    def extra_repr(self) -> str:
        """print(sae) -> TopKSAE(topk, blocks.8.hook_resid_post, d_in=576, width=4608, k=32, model=...)."""
        c = self.cfg
        rule = [f"k={c.k}"] if self.uses_k else []
        rule += [f"{n}={getattr(c, n)}" for n in self.hyperparameters if hasattr(c, n)]
        return ", ".join([c.architecture, c.hook or "?", f"d_in={c.d_in}", f"width={c.num_features}", *rule,
                          f"model={c.model_id or '?'}"])

    def summary(self) -> dict[str, Any]:
        """What it is, and for a loaded SAE its training and eval headline (see `saes.describe`)."""
        from saes.describe import sae_summary

        return sae_summary(self)

    def _repr_html_(self) -> str:
        from saes.describe import summary_html

        return summary_html(self)

    # ------------------------------------------------------------------ shapes and views

    @property
    def num_features(self) -> int:
        return self.cfg.num_features

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def W_enc(self) -> Tensor:
        """The encoder as `[d_in, F]` (the saved layout; a view of the `[F, d_in]` storage)."""
        return self.enc_weight.t()

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows; encoder = decoder transpose (Gao et al. 2024); zero biases."""
        w = torch.randn(self.W_dec.shape, generator=generator, dtype=torch.float32, device="cpu")
        w /= w.norm(dim=1, keepdim=True)
        self.W_dec.copy_(w)
        self.enc_weight.copy_(w)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # ------------------------------------------------------------------ inference

    def encode(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        """Active features of each token of `x [B, d_in]` under the architecture's inference rule."""
        raise NotImplementedError

    def decode(self, codes: SparseCodes) -> Tensor:
        """x_hat = codes @ W_dec + b_dec, touching only the active features."""
        return sparse_decode(codes, self.W_dec, self.b_dec)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def encode_batch(self, x: Tensor, *, matmul_dtype: torch.dtype | None = None) -> SparseCodes:
        """The batch-level training rule applied to `x` (architectures with `threshold_inference`)."""
        raise NotImplementedError(f"{self.architecture} has no batch inference rule")

    def encode_dense(self, x: Tensor) -> Tensor:
        """The `[B, F]` feature activations (convenient for analysis; training never builds it)."""
        return self.encode(x).to_dense()

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise WorkbenchError(
                f"this SAE takes inputs [tokens, {self.d_in}] (hook {self.cfg.hook or '?'}); got {tuple(x.shape)}"
            )

    def _encode_with(self, x: Tensor, selector: Any, matmul_dtype: torch.dtype | None) -> SparseCodes:
        self.check_input(x)
        (codes,) = encode(x - self.b_dec, self.W_enc, self.b_enc, [selector], matmul_dtype=matmul_dtype)
        return codes

    # ------------------------------------------------------------------ training

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        """Loss and statistics of one batch under the training rule (see each architecture)."""
        raise NotImplementedError

    def init_from_sample(self, x: Tensor) -> None:
        """Data-dependent initialisation after b_dec is set (`x`: scaled training sample); default none."""

    def compile_dense_parts(self) -> None:
        """torch.compile this architecture's dense tensor code, if it has any (`--compile`).

        The sparse kernels are custom autograd Functions that compilation would only break up,
        so only dense paths (the ReLU SAE's early, dense-code phase) are compiled.
        """

    def aux_selector(self, ctx: StepContext) -> Any | None:
        """The selector of the aux loss for this step (AuxK among dead features), or None."""
        if ctx.aux_loss == "auxk" and ctx.dead is not None and ctx.dead.numel() > 0 and ctx.aux_coef > 0:
            return TopK(min(ctx.k_aux, int(ctx.dead.numel())), features=ctx.dead)
        return None

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Drop the gradient component parallel to each (unit-norm) decoder row.

        Without it Adam would spend part of every step growing the rows that the renormalisation
        then shrinks back.
        """
        if not self.unit_norm_decoder or self.W_dec.grad is None:
            return
        g, w = self.W_dec.grad, self.W_dec
        g.sub_((g * w).sum(1, keepdim=True) * w)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def training_buffers(self) -> dict[str, Tensor]:
        """State besides parameters that training updates and a checkpoint must keep."""
        return {name: buf for name, buf in self.named_buffers()}

    # ------------------------------------------------------------------ normalisation folding

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on `scale * x` take raw `x`, with identical choices and x_hat / scale.

        Folded into the codes' units: biases and thresholds are divided by `scale` so every
        pre-activation is divided by it; the decoder rows are untouched (they stay unit-norm
        directions, and codes become magnitudes along them in the model's own units). Selection
        rules compare pre-activations with each other or with a threshold, so they pick the same
        features.
        """
        if scale <= 0:
            raise WorkbenchError(f"input scale must be > 0; got {scale}")
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)
        self._fold_thresholds(scale)
        self.cfg = dataclasses.replace(self.cfg, input_scale=self.cfg.input_scale * scale)

    def _fold_thresholds(self, scale: float) -> None:
        pass

    # ------------------------------------------------------------------ save/load tensors

    def weight_tensors(self) -> dict[str, Tensor]:
        """The saved tensors, in the documented layout (W_enc [d_in, F])."""
        out = {
            "W_enc": self.W_enc.detach().contiguous(),
            "b_enc": self.b_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_dec": self.b_dec.detach(),
        }
        for name in self.extra_tensors:
            out[name] = self.get_extra_tensor(name).detach()
        return out

    def get_extra_tensor(self, name: str) -> Tensor:
        return getattr(self, name)

    @torch.no_grad()
    def load_weight_tensors(self, tensors: dict[str, Tensor]) -> None:
        expected = {
            "W_enc": (self.d_in, self.num_features),
            "b_enc": (self.num_features,),
            "W_dec": (self.num_features, self.d_in),
            "b_dec": (self.d_in,),
            **{name: tuple(self.get_extra_tensor(name).shape) for name in self.extra_tensors},
        }
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise WorkbenchError(f"saved {self.architecture} SAE lacks tensors {missing}; has {sorted(tensors)}")
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise WorkbenchError(
                    f"saved tensor {name} has shape {tuple(tensors[name].shape)}; cfg.json implies {shape}"
                )
        self.enc_weight.copy_(tensors["W_enc"].t())
        self.b_enc.copy_(tensors["b_enc"])
        self.W_dec.copy_(tensors["W_dec"])
        self.b_dec.copy_(tensors["b_dec"])
        for name in self.extra_tensors:
            self.set_extra_tensor(name, tensors[name])

    def set_extra_tensor(self, name: str, value: Tensor) -> None:
        getattr(self, name).copy_(value)


def selector_training_step(
    sae: SparseAutoencoder, x: Tensor, ctx: StepContext, main: Any, multi: Any | None = None, aux: Any | None = None
) -> tuple[StepOutput, SparseCodes]:
    """The training step of every architecture whose code is one selector over one encoder matmul.

    Loss = FVU(main) [+ FVU(multi) / 8 (Multi-TopK)] [+ aux_coef * aux FVU of the residual]. All
    selectors read the same pre-activations (one matmul), and the backward touches only the
    places they picked.
    """
    sae.check_input(x)
    selectors = [main] + [s for s in (multi, aux) if s is not None]
    codes = encode(x - sae.b_dec, sae.W_enc, sae.b_enc, selectors, matmul_dtype=ctx.matmul_dtype)
    main_codes = codes[0]
    x_hat = sparse_decode(main_codes, sae.W_dec, sae.b_dec)
    sse = (x_hat - x).pow(2).sum()
    loss = sse / ctx.denom
    terms: dict[str, Tensor] = {}
    i = 1
    if multi is not None:
        x_hat_m = sparse_decode(codes[i], sae.W_dec, sae.b_dec)
        term = (x_hat_m - x).pow(2).sum() / ctx.denom
        loss = loss + term / 8
        terms["multi_topk"] = term.detach()
        i += 1
    if aux is not None:
        from saes.losses import aux_reconstruction_loss, moment_sums, variance_from_sums

        residual = (x - x_hat).detach()
        # Normalised by the residual's own variance (over the global batch), so the term keeps
        # its weight as the main reconstruction improves (as sparsify does; Gao et al. normalise
        # by the target's norm).
        res_var = variance_from_sums(ctx.reduce(moment_sums(residual), "sum")).to(x.dtype)
        term = aux_reconstruction_loss(residual, codes[i], sae.W_dec, res_var)
        loss = loss + ctx.aux_coef * term
        terms["aux"] = term.detach()
    return StepOutput(loss, sse.detach(), fired_counts(main_codes), terms), main_codes


def fired_counts(codes: SparseCodes) -> Tensor:
    """Per feature, on how many tokens it is active (value > 0) in these codes: `[F]` int64."""
    cols = codes.cols[codes.vals.detach() > 0]
    return torch.bincount(cols, minlength=codes.num_features)


def sse_of(x: Tensor, x_hat: Tensor) -> Tensor:
    return (x_hat - x).pow(2).sum()

