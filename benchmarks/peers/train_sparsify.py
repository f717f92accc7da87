"""Worker: EleutherAI sparsify's TopK SAE (`SparseCoder`), trained by its recipe; runs in its venv.

sparsify's `Trainer` trains from a language model's forward hooks, so it cannot take activations
that are already on disk; this worker applies, step by step, what its `Trainer.fit` does to each
SAE on a batch of activations (sparsify 1.3.3, trainer.py, loss_fn "fvu", one SAE, no DDP):

- `SparseCoder(d, SparseCoderConfig(k, num_latents=F), dtype=float32)` after `torch.manual_seed`,
  `torch.set_float32_matmul_precision("high")` as `fit` sets it;
- first step: b_dec = the batch mean; before every forward: decoder rows to unit norm;
- forward with the batch's total variance; loss = fvu + auxk_alpha * auxk + multi_topk_fvu / 8
  (auxk_alpha 0 and no Multi-TopK by default); backward; the gradient parallel to the decoder rows
  removed; optimiser step; zero_grad; scheduler step; tokens-since-fired bookkeeping.
- variant "adam" (the table's equal-rate row): its `optimizer="adam"` branch, torch Adam (no
  bitsandbytes here) at the benchmark's rate, `get_linear_schedule_with_warmup(adam, warm-up,
  steps)`: linear warm-up, then linear decay to 0 at the last step. The warm-up is the file's
  `warmup_steps` (sparsify's default of 1000 steps is longer than the whole run).
- variant "signum" (its default optimiser): SignSGD in a schedule-free wrapper (momentum 0.95) at
  its own width-scaled default rate 5e-3 / sqrt(F / 2^14), switched to eval before saving as its
  `save` does.
Decoding uses its eager `embedding_bag` path (its Triton decoder needs a GPU).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import torch  # noqa: E402

import worker_io  # noqa: E402


def main() -> None:
    args, data = worker_io.start("sparsify", variants=("adam", "signum"))
    import importlib.metadata as md

    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    p = data.params
    d, f, steps = data.rows.shape[1], p["num_features"], data.num_batches
    torch.set_float32_matmul_precision("high")
    torch.manual_seed(p["seed"])
    sae = SparseCoder(d, SparseCoderConfig(k=p["k"], num_latents=f), "cpu", dtype=torch.float32)
    schedulers = []
    if args.variant == "adam":
        lr = p["lr"]
        opt = torch.optim.Adam([dict(params=sae.parameters(), lr=lr)])
        schedulers.append(get_linear_schedule_with_warmup(opt, p["warmup_steps"], steps))
        recipe = (f"Adam lr {lr:.3g}, linear warm-up {p['warmup_steps']} step(s) then linear decay to 0, "
                  f"unit decoder rows, no AuxK (auxk_alpha 0, its default), no clipping")
    else:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        lr = 5e-3 / (f / 2**14) ** 0.5
        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
        opt.train()
        recipe = f"its default optimiser: SignSGD + schedule-free (momentum 0.95), its default lr {lr:.3g}, no AuxK"
    auxk_alpha, dead_threshold = 0.0, 10_000_000  # its TrainConfig defaults
    since_fired = torch.zeros(f, dtype=torch.long)
    did_fire = torch.zeros(f, dtype=torch.bool)
    fvu_sum = 0.0

    t0 = time.perf_counter()
    for step, x in enumerate(data):
        if step == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = since_fired > dead_threshold if auxk_alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        fvu_sum += float(out.fvu.detach())  # it logs the running FVU every step
        loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for s in schedulers:
            s.step()
        with torch.no_grad():
            since_fired += x.shape[0]
            since_fired[did_fire] = 0
            did_fire.zero_()
    seconds = time.perf_counter() - t0

    if args.variant == "signum":
        opt.eval()  # schedule-free: the averaged weights are the ones it saves
    with torch.no_grad():
        xh = data.heldout[:worker_io.CHECK_ROWS]
        enc = sae.encode(xh)
        recon = sae.decode(enc.top_acts, enc.top_indices)
    weights = {"W_enc": sae.encoder.weight, "b_enc": sae.encoder.bias, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    worker_io.finish(args, data, seconds=seconds, weights=weights, library_recon=recon,
                     version=md.version("eai-sparsify"), recipe=recipe,
                     extra={"lr": lr, "train_fvu_mean": fvu_sum / steps})


if __name__ == "__main__":
    main()
