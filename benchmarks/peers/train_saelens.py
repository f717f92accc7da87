"""Worker: SAELens's TopK SAE (`TopKTrainingSAE`), trained by its own `SAETrainer`; runs in its venv.

`SAETrainer` takes any iterator of activation batches as its data provider, so it runs here
unchanged: per step `training_forward_pass` (MSE summed over d, mean over tokens, plus TopK AuxK
once features are dead for `dead_feature_window` steps), backward, gradient-norm clip 1.0, Adam,
scheduler step. Its defaults otherwise (SAELens 6.54): decoder rows initialised to norm 0.1,
W_enc = W_dec^T, b_dec and b_enc zero, selection on pre-activations times decoder row norms
(`rescale_acts_by_decoder_norm`), constant learning rate without warm-up.

One setting is not its default: `normalize_activations="expected_average_only_in"` (inputs scaled
to mean norm sqrt(d), folded into the weights at the end), SAELens's own option that puts the
shared learning rate on the same footing as in the workbench (which scales inputs the same way);
with its default ("none") these raw activations (mean norm ~137) train far worse at that rate.
`fit` would estimate the scale from its data provider, consuming training batches; the scaler is
given its estimate beforehand instead, over the first 16 batches, with its own method.
"""

from __future__ import annotations

import time

import torch

import worker_io

NORM_BATCHES = 16


def main() -> None:
    args, data = worker_io.start("SAELens", variants=("normalized", "raw", "short-window"))
    import importlib.metadata as md

    from sae_lens import LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    p = data.params
    d, f, lr = data.rows.shape[1], p["num_features"], p["lr"]
    norm = "none" if args.variant == "raw" else "expected_average_only_in"
    # "short-window": features count as dead (and AuxK revives them) after 10% of the run's steps, the
    # workbench's rule, instead of after its default 1000 steps (longer than this whole run)
    window = max(1, data.num_batches // 10) if args.variant == "short-window" else None
    torch.manual_seed(p["seed"])
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=f, k=p["k"], normalize_activations=norm,
                                                device="cpu", dtype="float32"))
    cfg = SAETrainerConfig(total_training_samples=data.tokens, train_batch_size_samples=data.batch_size, lr=lr,
                           lr_end=lr / 10, device="cpu", logger=LoggingConfig(log_to_wandb=False),
                           **({"dead_feature_window": window} if window else {}))
    trainer = SAETrainer(cfg, sae, data_provider=iter(data))
    if norm != "none":
        trainer.activation_scaler.estimate_scaling_factor(d, iter(data.batch(b) for b in range(NORM_BATCHES)),
                                                          n_batches_for_norm_estimate=NORM_BATCHES)
    t0 = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - t0

    sae.eval()
    with torch.no_grad():
        xh = data.heldout[:worker_io.CHECK_ROWS]
        recon = sae.decode(sae.encode(xh))
        n = sae.W_dec.norm(dim=-1) if sae.cfg.rescale_acts_by_decoder_norm else torch.ones(f)
        weights = {"W_enc": sae.W_enc.t() * n[:, None], "b_enc": sae.b_enc * n,
                   "W_dec": sae.W_dec / n[:, None], "b_dec": sae.b_dec}
        if not sae.cfg.apply_b_dec_to_input:
            raise SystemExit("apply_b_dec_to_input=False does not fit the common form")
    worker_io.finish(args, data, seconds=seconds, weights=weights, library_recon=recon,
                     version=md.version("sae-lens"),
                     recipe=(f"SAETrainer: Adam lr {lr:.3g} constant, clip 1.0, AuxK after {cfg.dead_feature_window} "
                             f"dead steps, decoder init norm 0.1, normalize_activations {norm}"),
                     extra={"dead_by_its_window": int(trainer.dead_neurons.sum())})


if __name__ == "__main__":
    main()
