"""Why FC uniform loses: held-out error and L0 split by token norm (top 2% = high-norm tokens), and the
aux_zipf flags on a trained Mutual Choice SAE under the old (uncapped) and new (capped) entitlement.

Trains the bench's runs (benchmarks/bench_train.py: same config, batches, order) on --cache, then analyses
the trained SAEs on the cache's held-out split before the bench's own evaluation."""
import argparse, sys, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import bench_train as bt
from saes import TensorSource
from saes.losses import underused_features, usage_ranks, zipf_weights, zipf_target_rates

ap = argparse.ArgumentParser()
ap.add_argument("--cache", required=True)
ap.add_argument("--tokens", type=int, default=368_640)
ap.add_argument("--archs", nargs="+", default=["topk", "batchtopk", "mutual_choice", "feature_choice/zipf", "feature_choice"])
ap.add_argument("--heldout-fraction", type=float, default=0.01)
a = ap.parse_args()
args = argparse.Namespace(cache=a.cache, hook="blocks.8.hook_resid_post", tokens=a.tokens, heldout_tokens=16384, epochs=1,
                          batch_size=4096, k=32, expansion=8, seed=0, device="cpu", lr=0.0, aux="auto")
torch.set_num_threads(1)
train_x, held, what = bt.load_cache(args.cache, args.hook, args.tokens, args.heldout_tokens, args.seed)
print(what)
src = TensorSource(train_x, heldout=held)
runs = [bt.TrainerRun(args, src, arch, "auto") for arch in a.archs]
total = runs[0].trainer.total_steps
batches = [b["x"] for b in src.batches(["x"], args.batch_size, seed=args.seed, epoch=0, split="train", heldout_fraction=0.0)][:total]
bt.run_interleaved(runs, batches)
norm = held.norm(dim=1)
hi = norm >= norm.quantile(0.98)
print(f"held-out {held.shape[0]} tokens; top 2% by norm: {int(hi.sum())} tokens, norm >= {float(norm[hi].min()):.0f} "
      f"(median norm {float(norm.median()):.0f}); their share of the held-out variance "
      f"{float(((held[hi] - held.mean(0)) ** 2).sum() / ((held - held.mean(0)) ** 2).sum()):.3f}")
print("| run | held-out FVU | share of SSE on the top 2% | FVU of the other 98% (own variance) | L0 top 2% | L0 other | batch rule: L0 top 2% / other | batch rule: most top-2% tokens one feature fires on |")
print("|---|---:|---:|---:|---:|---:|---|---:|")
for r in runs:
    t = r.trainer
    s = t.slots[0]
    sae = t.folded(s)
    with torch.no_grad():
        codes = sae.encode(held)
        x_hat = sae.decode(codes)
        err = (x_hat - held).pow(2).sum(1)
        var_all = ((held - held.mean(0)) ** 2).sum()
        lo = ~hi
        var_lo = ((held[lo] - held[lo].mean(0)) ** 2).sum()
        l0 = torch.bincount(codes.rows, minlength=held.shape[0]).double()
        bl0 = torch.zeros(held.shape[0], dtype=torch.float64)
        best = []
        for i in range(0, held.shape[0], 4096):
            xb = held[i:i + 4096]
            if not sae.threshold_inference:
                break
            cb = sae.encode_batch(xb)
            bl0[i:i + xb.shape[0]] = torch.bincount(cb.rows, minlength=xb.shape[0]).double()
            hb = hi[i:i + xb.shape[0]]
            per_f = torch.bincount(cb.cols[hb[cb.rows]], minlength=sae.num_features)
            best.append(f"{int(per_f.max())}/{int(hb.sum())}")
    batch = f"{float(bl0[hi].mean()):.1f} / {float(bl0[lo].mean()):.1f}" if best else "-"
    print(f"| {r.name} | {float(err.sum() / var_all):.4f} | {float(err[hi].sum() / err.sum()):.3f} | "
          f"{float(err[lo].sum() / var_lo):.4f} | {float(l0[hi].mean()):.1f} | {float(l0[lo].mean()):.1f} | {batch} | "
          f"{' '.join(best) or '-'} |")
    if hasattr(s.sae, "usage_rank"):  # Feature Choice with Zipf capacities: do its ranks follow what features learn?
        r = s.sae.usage_rank
        ids = torch.arange(r.numel())
        print(f"   {s.name}: saved usage_rank equal to the feature id for {int((r == ids).sum())} of {r.numel()}; "
              f"correlation of rank with id {float(torch.corrcoef(torch.stack([r.double(), ids.double()]))[0, 1]):.3f}")
    if s.sae.architecture == "mutual_choice":
        u = s.usage
        f = u.numel()
        old = (32 * zipf_weights(f, 1.0)).clamp(max=1.0).float()[usage_ranks(u)]
        new = zipf_target_rates(u, 32, 1.0)
        top = u.topk(45).indices
        for name, ent in (("old (Zipf share, capped at 1)", old), ("new (capped at k/F)", new)):
            fl = torch.zeros(f, dtype=torch.bool)
            fl[underused_features(u, ent)] = True
            print(f"   MC aux_zipf flags, {name}: {int(fl.sum())} features flagged, {int(fl[top].sum())} of the 45 most used "
                  f"(usage {float(u[top].min()):.3f}-{float(u[top].max()):.3f}); dead {int((u == 0).sum())}")
for r in runs:
    res = r.result()
    print(r.name, "bench held-out FVU", round(res["fvu"], 4), "L0", round(res["l0"], 1), "dead %", round(res["dead"], 2))
