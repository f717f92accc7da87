"""Parity with SAEBench's own code: the same SAE, the same tokens, its core metrics beside ours.

    python benchmarks/peers/saebench_parity.py                  # quickstart SAE, 4 + 8 batches of 16 contexts
    python benchmarks/peers/saebench_parity.py --recon-batches 10 --sparsity-batches 10   # SAEBench's sizes
    # both sides at once (two processes), then the table from their results:
    python benchmarks/peers/saebench_parity.py --saebench-only & python benchmarks/peers/saebench_parity.py --ours-only
    python benchmarks/peers/saebench_parity.py --reuse

What it does:
1. builds (once, then reuses) a throwaway venv with sae-bench 0.6.0 under cache/peers/venvs/saebench
   (`saebench_venv.py`; never a dependency of the workbench);
2. rebuilds contexts of the SAE's training cache exactly as the harvest fed them to the model
   (BOS, text, EOS separators; `evals.cache_contexts`) and writes their token ids to one file;
3. exports the SAE with `saes.formats.export_saelens` (SAELens 6 files, with the metadata SAELens's
   `ActivationsStore.from_sae` requires);
4. runs SAEBench's `run_evals` in its venv (`saebench_worker.py`) on those rows, through SAELens's
   own `SAE.load_from_disk` and `ActivationsStore.from_sae`, and the offline model loaded into a
   TransformerLens 3 `HookedTransformer` from the same .gguf the workbench loads;
5. computes ours on the tokens SAEBench reports having scored (checked equal to the ones given):
   `evals.spliced_losses` for CE/KL (SAEBench's first `--recon-batches` batches), and
   `evals.ReconstructionStats` + `evals.FeatureStats` on activations captured with
   `workbench.hooks.capture` for the variance/sparsity metrics (its next `--sparsity-batches`:
   SAEBench's `reset_input_dataset` between the two phases does not rewind SAELens's token
   iterator, so they continue after the reconstruction rows and wrap around to the first);
6. prints the parity table (`parity_table.py`): metric, ours, SAEBench, |diff|, tolerance, verdict,
   reason. Exit status 1 when a row is beyond its tolerance.

Both sides ignore {BOS, EOS, pad} (SAEBench's multiple_evals `ignore_tokens`) and splice only at
text positions (its `exclude_special_tokens_from_reconstruction=True`, our default "text").
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from parity_table import Row, failures, markdown, saebench_explained_variance  # noqa: E402

DEFAULT_SAE = "cache/quickstart/saes/blocks.8.hook_resid_post/topk-k32-x8"


def log(msg: str) -> None:
    print(f"[parity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", default=DEFAULT_SAE, help="our SAE directory")
    p.add_argument("--cache", default="", help="its activation cache (default: the one it was trained on)")
    p.add_argument("--model", default="smollm2-135m", help="offline model alias (its .gguf feeds both sides)")
    p.add_argument("--batch-prompts", type=int, default=16, help="contexts per batch (SAEBench: 16)")
    p.add_argument("--recon-batches", type=int, default=4, help="batches for CE/KL (SAEBench: 10)")
    p.add_argument("--sparsity-batches", type=int, default=8, help="batches for variance/sparsity (SAEBench: 1)")
    p.add_argument("--split", default="train", help="cache split the contexts come from (train, heldout, all)")
    p.add_argument("--work", default="/tmp/saebench_parity", help="scratch folder (export, tokens, results)")
    p.add_argument("--venvs", default=str(ROOT / "cache" / "peers" / "venvs"))
    p.add_argument("--timeout", type=int, default=3600, help="seconds SAEBench's run may take")
    p.add_argument("--reuse", action="store_true", help="reuse both sides' results in --work if present (table only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)")
    p.add_argument("--saebench-only", action="store_true", help="run only SAEBench's side (to run beside --ours-only)")
    p.add_argument("--ours-only", action="store_true",
                   help="compute only our side on the rows SAEBench will be given (to run beside its worker); a "
                        "later --reuse run checks SAEBench scored those very rows and prints the table")
    return p.parse_args(argv)


def contexts(reader, hook: str, split: str, n: int, per_batch: int):
    from evals import cache_contexts

    batches = list(cache_contexts(reader, hook, split=split, max_contexts=n, batch_contexts=per_batch))
    got = sum(b.tokens.shape[0] for b in batches)
    if got < n:
        raise SystemExit(f"the cache's {split} split rebuilds {got} contexts; {n} asked for")
    return batches


def run_saebench(args, work: Path, job: dict) -> dict:
    import saebench_venv

    result = work / "saebench.json"
    if args.reuse and result.is_file():
        log(f"reusing {result}")
        return json.loads(result.read_text())
    py = saebench_venv.ensure(Path(args.venvs), log=log)
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job, indent=1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": ""}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    log(f"SAEBench run_evals in {py.parent.parent.name} (timeout {args.timeout}s)")
    t0 = time.perf_counter()
    worker_log = work / "saebench.log"
    with worker_log.open("w") as f:
        try:
            proc = subprocess.run([str(py), str(HERE / "saebench_worker.py"), str(job_file)], env=env,
                                  stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"SAEBench's run took over {args.timeout}s; give fewer batches or a longer --timeout")
    if proc.returncode:
        raise SystemExit(f"SAEBench's worker failed (log: {worker_log}):\n{worker_log.read_text()[-4000:]}")
    log(f"SAEBench done in {time.perf_counter() - t0:.0f}s")
    return json.loads(result.read_text())


def ours(lm, sae, hook: str, recon, sparsity) -> dict:
    """Our numbers, from the workbench's evals API, on the given batches of contexts."""
    import torch

    from evals import FeatureStats, ReconstructionStats, spliced_losses
    from evals.cache_pass import accumulate_batch
    from workbench.hooks import capture

    t0 = time.perf_counter()
    spliced = spliced_losses(lm, sae, hook, recon, error_term=False, splice_positions="text")
    spliced["seconds"] = time.perf_counter() - t0
    rec = ReconstructionStats(sae.d_in, sae.num_features)
    feats = FeatureStats(sae.num_features)
    per_batch: list[tuple[float, float, int]] = []
    rel_bias: list[float] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for cb in sparsity:
            x = capture(lm, cb.tokens, [hook])[hook][cb.keep].float()
            _, x_hat = accumulate_batch(sae, x, rec, feats)
            b = x.shape[0]
            xd, hd = x.double(), x_hat.double()
            per_batch.append((float((xd - hd).pow(2).sum()), float(xd.pow(2).sum()), b))
            rel_bias.append(float(hd.pow(2).sum(1).mean() / (xd * hd).sum(1).mean()))
            norm_in = x.norm(dim=1)
            rec_norms = getattr(rec, "_parity_norms", [0.0, 0.0])
            rec_norms[0] += float(norm_in.double().sum())
            rec_norms[1] += float(x_hat.norm(dim=1).double().sum())
            rec._parity_norms = rec_norms  # type: ignore[attr-defined]
    summary = rec.summary()
    summary["l2_norm_in"] = rec._parity_norms[0] / rec.n  # type: ignore[attr-defined]
    summary["l2_norm_out"] = rec._parity_norms[1] / rec.n  # type: ignore[attr-defined]
    summary["saebench_ev_batched"] = saebench_explained_variance(per_batch, sae.d_in)
    summary["rel_bias_batched"] = sum(rel_bias) / len(rel_bias)
    summary["seconds"] = time.perf_counter() - t0
    return {"spliced": spliced, "recon": summary, "density": feats.density.tolist(), "tokens": rec.n}


def table(o: dict, t: dict, num_features: int) -> list[Row]:
    m = t["metrics"]
    mb, mp = m["model_behavior_preservation"], m["model_performance_preservation"]
    rq, sh, sp = m["reconstruction_quality"], m["shrinkage"], m["sparsity"]
    s, r = o["spliced"], o["recon"]
    delta = t.get("tl_vs_hf_max_logit_diff", float("nan"))
    model_noise = (f"two implementations of one float32 model (TransformerLens 3 in SAEBench's venv, max logit diff "
                   f"{delta:.1e} to transformers; ours runs transformers' modules): a logit change of d moves a "
                   f"log-prob by at most 2d")
    rows = [
        Row("CE clean (nats)", s["ce_clean"], mp["ce_loss_without_sae"], 5e-4, model_noise),
        Row("CE with SAE (nats)", s["ce_sae"], mp["ce_loss_with_sae"], 1e-3,
            model_noise + "; plus top-k flips at the k-th feature on that noise"),
        Row("CE zero-ablated (nats)", s["ce_zero"], mp["ce_loss_with_ablation"], 5e-4, model_noise),
        Row("CE loss score", s["ce_loss_score"], mp["ce_loss_score"], 5e-4,
            "the CE tolerances above over CE_zero - CE_clean (~7.7 nats)"),
        Row("KL with SAE", s["kl_sae"], mb["kl_div_with_sae"], 5e-4, model_noise + " (KL: 4d)"),
        Row("KL zero-ablated", s["kl_zero"], mb["kl_div_with_ablation"], 5e-4, model_noise + " (KL: 4d)"),
        Row("KL div score", s["kl_div_score"], mb["kl_div_score"], 5e-4, "the KL tolerances above over KL_zero (~8)"),
        Row("explained variance, SAEBench's formula", r["saebench_ev_batched"], rq["explained_variance"], 1e-4,
            "its formula (E|x|^2 - (mean x^2)^2 denominator, batch means averaged) on our activations; "
            "float32 activations of two model implementations"),
        Row("explained variance, SAEBench's formula (our evals, pooled)", r["saebench_explained_variance"],
            rq["explained_variance"], 1e-3,
            "evals.reconstruction pools all tokens; SAEBench averages per-batch means (batches differ by a "
            "few masked tokens)"),
        Row("explained variance, ours = 1 - FVU", r["explained_variance"], rq["explained_variance"], None,
            "definition: ours divides by sum |x - mean x|^2; SAEBench 0.6.0 by E|x|^2 - (mean x^2)^2"),
        Row("explained variance legacy (per-token)", r["saebench_explained_variance_legacy"],
            rq["explained_variance_legacy"], 2e-3,
            "same definition; our blocks are 2048 consecutive text rows, its batches 16 contexts "
            "less their BOS/EOS, so the batch means differ slightly"),
        Row("cossim", r["cossim"], rq["cossim"], 1e-4, "same definition; float32 activations of two implementations"),
        Row("l2 norm in", r["l2_norm_in"], sh["l2_norm_in"], 1e-4, "activations of two implementations", True),
        Row("l2 norm out", r["l2_norm_out"], sh["l2_norm_out"], 1e-4, "activations of two implementations", True),
        Row("l2 ratio", r["l2_ratio"], sh["l2_ratio"], 1e-4, "same definition; float32 noise"),
        Row("relative reconstruction bias", r["relative_reconstruction_bias"],
            sh["relative_reconstruction_bias"], 1e-3,
            "ours pools E|x_hat|^2 / E<x,x_hat> over all tokens; SAEBench averages per-batch ratios"),
        Row("relative reconstruction bias, per-batch mean", r["rel_bias_batched"],
            sh["relative_reconstruction_bias"], 1e-4, "its aggregation on our activations; float32 noise"),
        Row("L0", r["l0"], sp["l0"], 0.01, "top-k: exactly k unless ReLU zeroes a selected pre-activation"),
        Row("L1", r["l1"], sp["l1"], 1e-4, "float32 noise of activations and encoder", True),
    ]
    import torch

    ours_d = torch.tensor(o["density"], dtype=torch.float64)
    theirs_d = torch.tensor(t["feature_density"], dtype=torch.float64)
    n = o["tokens"]
    rows += [
        Row("mean feature density", float(ours_d.mean()), float(theirs_d.mean()), 1e-6, "L0 / num_features"),
        Row("dead features (density 0 on these tokens)", float((ours_d == 0).sum()), float((theirs_d == 0).sum()),
            2, "a feature firing once or twice can flip with a top-k tie"),
        Row("features with density > 1%", float((ours_d > 0.01).sum()), float((theirs_d > 0.01).sum()), 2,
            "features at the 1% line can cross it with one top-k flip"),
        Row("max per-feature |density diff| x tokens", float((ours_d - theirs_d).abs().max() * n), 0.0,
            max(3.0, 1e-4 * n), f"top-k flips at the k-th/k+1-th tie, in tokens (of {n})"),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    import torch
    from safetensors.torch import load_file, save_file

    from evals import load_for_eval
    from harvesting import CacheReader
    from saes.formats import export_saelens
    from workbench.models import load_model, offline_path

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sae = load_for_eval(args.sae).eval()
    hook = sae.cfg.hook
    cache = args.cache or (sae.cfg.train or {}).get("cache") or ""
    if not cache:
        raise SystemExit("the SAE records no training cache; give --cache")
    reader = CacheReader(cache)
    p = args.batch_prompts
    n_ctx = p * max(args.recon_batches, args.sparsity_batches)
    batches = contexts(reader, hook, args.split, n_ctx, p)
    rows = torch.cat([b.tokens for b in batches])[:n_ctx]
    special = sorted(batches[0].special_ids)
    save_file({"input_ids": rows.contiguous()}, str(work / "tokens.safetensors"))
    export_saelens(sae, work / "saelens", cache=cache)
    log(f"{n_ctx} contexts of {rows.shape[1]} tokens from {cache} ({args.split}); SAE exported to {work / 'saelens'}")

    job = {"gguf": str(offline_path(args.model)), "sae_dir": str(work / "saelens"),
           "tokens": str(work / "tokens.safetensors"), "seen_tokens": str(work / "seen.safetensors"),
           "out": str(work / "saebench.json"), "batch_prompts": p, "recon_batches": args.recon_batches,
           "sparsity_batches": args.sparsity_batches, "ignore_tokens": special, "exclude_special": True}
    from evals import ContextBatch

    def as_batches(t: torch.Tensor) -> list:
        keep = ~torch.isin(t, torch.tensor(special))
        return [ContextBatch(t[i:i + p], keep[i:i + p], tuple(special)) for i in range(0, t.shape[0], p)]

    ours_file = work / "ours.json"
    # SAEBench takes its reconstruction batches from the first row; its store's `reset_input_dataset`
    # does not rewind the token iterator, so the sparsity batches continue after them and wrap around.
    expected = {"recon": rows[: args.recon_batches * p],
                "sparsity": rows[(args.recon_batches * p + torch.arange(args.sparsity_batches * p)) % rows.shape[0]]}
    if args.ours_only:
        mine = ours(load_model(args.model), sae, hook, as_batches(expected["recon"]),
                    as_batches(expected["sparsity"]))
        ours_file.write_text(json.dumps(mine, indent=1, default=str))
        log(f"ours written to {ours_file}")
        return 0
    theirs = run_saebench(args, work, job)
    if args.saebench_only:
        return 0
    seen = load_file(str(work / "seen.safetensors"))

    for name in ("recon", "sparsity"):
        if not torch.equal(seen[name], expected[name]):
            raise SystemExit(f"SAEBench's {name} batches are not the rows expected")
    log("SAEBench scored exactly the rows expected (checked); computing ours")
    if args.reuse and ours_file.is_file():
        log(f"reusing {ours_file}")
        mine = json.loads(ours_file.read_text())
    else:
        lm = load_model(args.model)
        mine = ours(lm, sae, hook, as_batches(seen["recon"]), as_batches(seen["sparsity"]))
        ours_file.write_text(json.dumps(mine, indent=1, default=str))
    rows_out = table(mine, theirs, sae.num_features)
    text = markdown(rows_out)
    header = (f"SAEBench parity, {datetime.date.today().isoformat()}: {args.sae} on {cache} ({args.split} split); "
              f"CE/KL on {args.recon_batches} x {p} contexts ({mine['spliced']['ce_tokens']} scored tokens), "
              f"variance/sparsity on {args.sparsity_batches} x {p} contexts ({mine['tokens']} text tokens); "
              f"SAEBench {theirs['versions']['sae-bench']}, SAELens {theirs['versions']['sae-lens']}, "
              f"TransformerLens {theirs['versions']['transformer-lens']}, torch {theirs['versions']['torch']}; "
              f"TL-vs-transformers max logit diff in SAEBench's venv {theirs['tl_vs_hf_max_logit_diff']:.2e}; "
              f"SAELens loaded our export as {theirs['sae_class']} with metadata {theirs['sae_metadata']}")
    print(header + "\n\n" + text)
    (work / "table.md").write_text(header + "\n\n" + text + "\n")
    bad = failures(rows_out)
    for r in bad:
        log(f"beyond tolerance: {r.metric}: ours {r.ours} vs SAEBench {r.theirs}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
