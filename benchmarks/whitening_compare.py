"""Whitening before dictionary learning (Donhauser et al.): none / pca / zca, several seeds each.

The claim tested: PCA whitening of the inputs (fitted on a control set) makes a TopK SAE's
features more selective than one trained on raw inputs. Each arm trains the same TopK SAE on the
same rows with `sae train --whiten none|pca|zca` (fitted on the initialisation sample, or on
--whiten-source), then `sae eval` measures, on the held-out rows of the cache and in raw units
(the saved SAEs take raw activations: the whitening is folded into their weights):

- raw FVU (reconstruction.fvu), spliced CE loss score (the SAE replaces the activation in the
  model), dead features (never active on the cache);
- selectivity: sparse probing of wiki-vital topics from the top-1/2/5 features (SAEBench's sparse
  probing as `sae eval` reports it), on the held-out documents (or --probe-cache), which the SAEs did not train on.

Trainings run --jobs at a time (seeds in the outer loop), then one `sae eval` over all SAEs (the
model loads once; each eval.json lands in its SAE's directory); a rerun skips trained SAEs. Prints a table (mean +- sample sd over seeds, and each seed)
and writes results.json to --out.

    python benchmarks/whitening_compare.py --out /tmp/whiten/cmp --seeds 0 1 2 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = ("none", "pca", "zca")
HOOK = "blocks.8.hook_resid_post"
METRICS = {  # name -> path in eval.json
    "raw_fvu": ("reconstruction", "fvu"),
    "ce_loss_score": ("spliced", "ce_loss_score"),
    "dead_pct": ("health", "dead_pct"),
    "probe_top1": ("probing", "sae", "1"),
    "probe_top2": ("probing", "sae", "2"),
    "probe_top5": ("probing", "sae", "5"),
}
EXTRA = ("probe_classes", "probe_test_documents", "probe_top1_se", "probe_top5_se", "heldout_tokens", "ce_contexts")


def sae_bin() -> str:
    return str(Path(sys.executable).with_name("sae"))


def run(cmd: list[str], log: Path) -> float:
    t = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t


def dig(d: dict, path: tuple[str, ...]):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def probe_value(ev: dict, k: str) -> float | None:
    """Mean test accuracy over the topic tasks of the probe on the top-k SAE features (None if probing was skipped)."""
    v = ((ev.get("probing") or {}).get("mean") or {}).get(f"sae_top{k}")
    if isinstance(v, dict):
        v = v.get("estimate", v.get("mean"))
    return None if v is None else float(v)


def metrics_of(ev: dict) -> dict[str, float | None]:
    out = {}
    for name, path in METRICS.items():
        out[name] = probe_value(ev, path[-1]) if name.startswith("probe") else dig(ev, path)
    p = ev.get("probing") or {}
    out["probe_classes"], out["probe_test_documents"] = p.get("classes"), p.get("test_documents")
    se = p.get("mean_se") or {}
    out["probe_top1_se"], out["probe_top5_se"] = se.get("sae_top1"), se.get("sae_top5")
    out["heldout_tokens"] = dig(ev, ("reconstruction", "tokens"))
    out["ce_contexts"] = dig(ev, ("settings", "ce_contexts"))
    return out


def train_cmd(a: argparse.Namespace, arm: str, seed: int, run_dir: Path) -> list[str]:
    return [sae_bin(), "train", "--cache", a.cache, "--hooks", HOOK, "--k", str(a.k), "--expansion", str(a.expansion),
            "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--heldout-fraction", str(a.heldout_fraction),
            "--seed", str(seed), "--whiten", arm, "--whiten-source", a.whiten_source, "--out", str(run_dir),
            "--checkpoint-every", "0", "--no-progress"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/quickstart/acts")
    ap.add_argument("--out", default="/tmp/whiten/cmp")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--heldout-fraction", type=float, default=0.3,
                    help="held-out share of the cache: its documents are the ones probed (0.3 of 100k tokens: ~300)")
    ap.add_argument("--whiten-source", default="init")
    ap.add_argument("--ce-contexts", type=int, default=16)
    ap.add_argument("--probe-cache", default="", help="cache of other documents to probe (default: the held-out split)")
    ap.add_argument("--model", default="", help="model for the spliced CE ('none' skips it)")
    ap.add_argument("--jobs", type=int, default=3, help="trainings run at once")
    ap.add_argument("--report-only", action="store_true", help="only read the eval.json files already written")
    a = ap.parse_args()
    out = Path(a.out)
    if a.report_only:
        return report(a, out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    runs = [(arm, seed) for seed in a.seeds for arm in a.arms]  # seeds outer: early ones are complete comparisons
    sae_dir = {r: out / f"{r[0]}-s{r[1]}" / HOOK / f"topk-k{a.k}-x{a.expansion}" for r in runs}
    todo = [r for r in runs if not (sae_dir[r] / "cfg.json").is_file()]
    t0 = time.perf_counter()
    running: list[tuple[tuple[str, int], subprocess.Popen, float]] = []
    while todo or running:
        while todo and len(running) < a.jobs:
            r = todo.pop(0)
            f = (out / f"train-{r[0]}-s{r[1]}.log").open("w")
            cmd = train_cmd(a, r[0], r[1], out / f"{r[0]}-s{r[1]}")
            with log.open("a") as lf:
                lf.write("$ " + " ".join(cmd) + "\n")
            running.append((r, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), time.perf_counter()))
        time.sleep(2)
        for item in list(running):
            r, p, t = item
            if p.poll() is not None:
                running.remove(item)
                if p.returncode:
                    raise SystemExit(f"training {r} failed (rc {p.returncode}); see {out}/train-{r[0]}-s{r[1]}.log")
                print(f"trained {r[0]} seed {r[1]} in {time.perf_counter() - t:.0f} s", flush=True)
    print(f"all trainings done in {time.perf_counter() - t0:.0f} s", flush=True)
    # no --out: each eval.json goes into its SAE's directory (under --out, sae eval names every one of these
    # SAEs by its last path component, topk-k32-x8, so they would overwrite each other)
    cmd = [sae_bin(), "eval", "--sae", *[str(sae_dir[r]) for r in runs], "--cache", a.cache,
           "--ce-contexts", str(a.ce_contexts), "--no-progress"]
    if a.probe_cache:
        cmd += ["--probe-cache", a.probe_cache]
    if a.model:
        cmd += ["--model", a.model]
    secs = run(cmd, log)
    print(f"evaluated {len(runs)} SAEs in {secs:.0f} s", flush=True)
    report(a, out)


def report(a: argparse.Namespace, out: Path) -> None:
    runs = [(arm, seed) for seed in a.seeds for arm in a.arms]
    rows: list[dict] = []
    for arm, seed in runs:
        ev_path = out / f"{arm}-s{seed}" / HOOK / f"topk-k{a.k}-x{a.expansion}" / "eval.json"
        ev_path = ev_path if ev_path.is_file() else None
        ev = json.loads(ev_path.read_text()) if ev_path else {}
        train_summary = json.loads((out / f"{arm}-s{seed}" / "summary.json").read_text())["saes"][0]
        rows.append({"arm": arm, "seed": seed, **metrics_of(ev), "train_heldout_fvu": train_summary.get("heldout_fvu"),
                     "train_dead_pct": train_summary.get("dead_pct"), "eval_json": str(ev_path)})
    env_note = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    (out / "results.json").write_text(json.dumps({"args": vars(a), "env": env_note, "rows": rows}, indent=1))
    print_table(rows)
    print("sample sizes: " + "; ".join(f"{r['arm']}-s{r['seed']}: {r['heldout_tokens']} held-out tokens, "
                                       f"{r['probe_classes']} probing classes / {r['probe_test_documents']} test documents, "
                                       f"{r['ce_contexts']} CE contexts" for r in rows))


def print_table(rows: list[dict]) -> None:
    names = list(METRICS)
    print("| whitening | seeds | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for arm in ARMS:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        cells = []
        for n in names:
            v = [r[n] for r in rs if r[n] is not None]
            if not v:
                cells.append("n/a")
            elif len(v) == 1:
                cells.append(f"{v[0]:.4f}")
            else:
                cells.append(f"{statistics.mean(v):.4f} +- {statistics.stdev(v):.4f} ({', '.join(f'{x:.4f}' for x in v)})")
        print(f"| {arm} | {len(rs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
