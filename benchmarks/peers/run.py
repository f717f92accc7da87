"""Peers, side by side: the workbench, sparsify and SAELens train the same TopK SAE on the same batches.

    python benchmarks/peers/run.py                      # 3 rounds, 368,640 tokens each run
    python benchmarks/peers/run.py --rounds 5 --extras sparsify-signum ours-float32

What it does: builds (once, then reuses) a venv per peer under cache/peers/venvs/ with sae-lens
6.54.12 / eai-sparsify 1.3.3 and the workbench's CPU torch; exports the training rows of one of our
caches, in feed order, plus held-out rows into one file; then runs one worker per library in its
own venv (train_ours.py / train_sparsify.py / train_saelens.py), alternating (ours, sparsify,
SAELens, ours, ...) for --rounds rounds, every worker with the same torch thread count. Each
worker trains on every batch of the file in order with its library's own recipe at the same
learning rate, times its training loop, and saves its weights converted to one common form
(checked against the library's own forward). The driver scores every run the same way: held-out
FVU = sum |x - x_hat|^2 / sum |x - mean(x)|^2 over the held-out rows, and dead % = features that
never fire on the last --dead-window training tokens, both with the final weights. Each round
also times the fp32 encoder matmul [B x d] @ [d x F] alone: the tokens/s of a step that cost
nothing else. stdout is Markdown (paste it into benchmarks/RESULTS.md); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared machine_info
from machine_info import cpu_model  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import batches_file  # noqa: E402
import cache_export  # noqa: E402
import common_form  # noqa: E402
import venvs  # noqa: E402


@dataclass(frozen=True)
class Run:
    name: str
    venv: str | None  # None: the workbench's own venv (this interpreter)
    script: str
    variant: str
    peer: bool  # a peer library's configuration: the goals compare the workbench with the fastest of these


MAIN = (Run("workbench", None, "train_ours.py", "auto", False),
        Run("sparsify", "sparsify", "train_sparsify.py", "adam", True),
        Run("SAELens", "saelens", "train_saelens.py", "normalized", True))
EXTRAS = {"ours-float32": Run("workbench, fp32 selection", None, "train_ours.py", "float32", False),
          "sparsify-signum": Run("sparsify, its default optimiser", "sparsify", "train_sparsify.py", "signum", True),
          "saelens-raw": Run("SAELens, no input scaling (its default)", "saelens", "train_saelens.py", "raw", True),
          "saelens-short-window": Run("SAELens, dead after 10% of the steps", "saelens", "train_saelens.py",
                                      "short-window", True)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine(threads: int) -> str:
    cpu = cpu_model()
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, torch {torch.__version__}, {threads} thread(s) in every run"


def git_commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def matmul_floor(batch: int, d: int, f: int, threads: int, reps: int = 10) -> float:
    """Tokens/s if a training step cost only the fp32 encoder matmul (forward, bias included)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(batch, d, generator=g), torch.randn(f, d, generator=g), torch.zeros(f)
    for _ in range(3):
        torch.addmm(b, x, w.t())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.addmm(b, x, w.t())
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def run_worker(run: Run, python: Path, data: Path, out: Path, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               TOKENIZERS_PARALLELISM="false")
    cmd = [str(python), str(HERE / run.script), str(data), str(out), "--threads", str(threads), "--variant", run.variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{run.name} worker failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads((out / "result.json").read_text())
    if result["threads"] != threads:
        raise SystemExit(f"{run.name} ran with {result['threads']} torch threads instead of {threads}")
    return result


def score(weights: Path, held: torch.Tensor, last: torch.Tensor, k: int) -> tuple[float, float]:
    """(held-out FVU, dead fraction on `last`) of a worker's common-form weights."""
    w = load_file(str(weights))
    common_form.check_weights(w)
    return common_form.fvu(w, held, k), common_form.dead_fraction(w, last, k)


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per run name: medians over rounds of tokens/s and FVU, the tokens/s of every round, the rest."""
    out = {}
    for name, rs in results.items():
        tps = [r["tokens"] / r["seconds"] for r in rs]
        out[name] = {"tok_s": statistics.median(tps), "tok_s_all": tps,
                     "fvu": statistics.median(r["fvu"] for r in rs), "fvu_all": [r["fvu"] for r in rs],
                     "dead": statistics.median(r["dead"] for r in rs),
                     "rss": max(r["peak_rss_mib"] for r in rs), "rss_load": max(r["rss_after_load_mib"] for r in rs),
                     "diff": max(r["conversion_max_rel_diff"] for r in rs), "recipe": rs[0]["recipe"],
                     "version": rs[0]["version"], "torch": rs[0]["torch"]}
    return out


def goals(s: dict[str, dict], runs: list[Run], floor: float) -> list[str]:
    ours = s[runs[0].name]
    peers = [r.name for r in runs if r.peer]  # every peer configuration in the table, extras included
    fast = max(peers, key=lambda n: s[n]["tok_s"])
    ratio = ours["tok_s"] / s[fast]["tok_s"]
    fvu_ok = ours["fvu"] <= s[fast]["fvu"]
    g1 = "**met**" if ratio >= 2 and fvu_ok else "**not met**"
    share = ours["tok_s"] / floor
    g2 = "**met**" if share >= 0.85 else "**not met**"
    return [f"- Goal >= 2x the faster peer's tokens/s at equal or better FVU: {g1}. Faster peer: {fast}; "
            f"workbench {ratio:.2f}x its tokens/s, held-out FVU {ours['fvu']:.4f} vs {s[fast]['fvu']:.4f}.",
            f"- Goal >= 85% of the fp32 encoder-matmul floor: {g2}. Workbench {ours['tok_s']:,.0f} tokens/s = "
            f"{share:.0%} of {floor:,.0f}."]


def render(s: dict[str, dict], runs: list[Run], floors: list[float], header: list[str]) -> str:
    ours = s[runs[0].name]
    lines = list(header) + ["", "| run | tokens/s (median) | tokens/s, every round | workbench vs this | held-out FVU "
                                "| dead % | peak RSS MiB (after loading the batches) |",
                            "|---|---:|---|---:|---:|---:|---:|"]
    for r in runs:
        v = s[r.name]
        fvus = sorted(set(f"{x:.4f}" for x in v["fvu_all"]))
        fvu = f"{v['fvu']:.4f}" + ("" if len(fvus) == 1 else f" ({fvus[0]}-{fvus[-1]})")
        lines.append(f"| {r.name} | {v['tok_s']:,.0f} | {' '.join(f'{t:,.0f}' for t in v['tok_s_all'])} | "
                     f"{ours['tok_s'] / v['tok_s']:.2f}x | {fvu} | {100 * v['dead']:.2f} | "
                     f"{v['rss']:,.0f} ({v['rss_load']:,.0f}) |")
    floor = statistics.median(floors)
    lines += ["", f"fp32 encoder matmul alone, same rounds: **{floor:,.0f} tokens/s** (median; every round "
                  f"{' '.join(f'{t:,.0f}' for t in floors)}).", ""]
    lines += goals(s, runs, floor)
    lines += ["", "Recipes (each library's own, at the shared rate):"]
    for r in runs:
        v = s[r.name]
        lines.append(f"- {r.name} ({v['version']}, torch {v['torch']}): {v['recipe']}; common-form conversion "
                     f"vs its own forward: max rel. diff {v['diff']:.1e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", help=f"activation cache (default: the first of {', '.join(cache_export.DEFAULT_CACHES)})")
    ap.add_argument("--hook", default="blocks.8.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=368_640, help="training tokens per run")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8, help="features = expansion x d")
    ap.add_argument("--lr", type=float, default=0.0, help="shared Adam rate (0: 2e-4 / sqrt(F / 2^14))")
    ap.add_argument("--warmup-steps", type=int, default=-1, help="sparsify's warm-up (-1: 1%% of steps, as ours)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--heldout-fraction", type=float, default=0.05, help="of the cache's contexts")
    ap.add_argument("--heldout-tokens", type=int, default=16_384)
    ap.add_argument("--dead-window", type=int, default=0, help="training tokens the dead rule looks at (0: 10%%)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extras", nargs="*", default=[], choices=sorted(EXTRAS), help="extra rows")
    ap.add_argument("--venvs", default=str(ROOT / "cache/peers/venvs"))
    ap.add_argument("--work", default=str(ROOT / "cache/peers/run"), help="batches file and per-run outputs")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        ap.error(f"--rounds ({args.rounds}) and --threads ({args.threads}) must be >= 1")
    try:  # a bad --cache / --hook: one line and exit 2, like every workbench command
        cache = cache_export.find_cache(ROOT, args.cache)
        d = cache_export.d_model(cache, args.hook)
    except SystemExit as e:
        ap.error(str(e))
    runs = list(MAIN) + [EXTRAS[e] for e in args.extras]
    pythons = {r.name: Path(sys.executable) if r.venv is None else venvs.ensure(Path(args.venvs), r.venv, log)
               for r in runs}

    work = Path(args.work)
    f = args.expansion * d
    lr = args.lr or 2e-4 / (f / 2**14) ** 0.5
    steps = args.tokens // args.batch_size
    warm = args.warmup_steps if args.warmup_steps >= 0 else int(round(0.01 * steps))
    dead_window = args.dead_window or max(args.batch_size, args.tokens // 10 // args.batch_size * args.batch_size)
    log(f"exporting {args.tokens:,} tokens of {args.hook} from {cache}")
    path, what = cache_export.export(cache, args.hook, work / "batches.safetensors", tokens=args.tokens,
                                     batch_size=args.batch_size, heldout_fraction=args.heldout_fraction,
                                     heldout_tokens=args.heldout_tokens, seed=args.seed,
                                     params={"k": args.k, "num_features": f, "lr": lr, "warmup_steps": warm})
    data = batches_file.read(path)
    held, last = data.heldout, data.last_rows(dead_window)
    del data

    results: dict[str, list[dict]] = {r.name: [] for r in runs}
    floors = []
    for rnd in range(args.rounds):
        for i, r in enumerate(runs):
            res = run_worker(r, pythons[r.name], path, work / f"run{i}", args.threads)
            res["fvu"], res["dead"] = score(work / f"run{i}" / "weights.safetensors", held, last, args.k)
            results[r.name].append(res)
            log(f"round {rnd + 1}/{args.rounds} {r.name}: {res['tokens'] / res['seconds']:,.0f} tokens/s, "
                f"FVU {res['fvu']:.4f}, dead {100 * res['dead']:.2f}%, peak RSS {res['peak_rss_mib']:,.0f} MiB")
        floors.append(matmul_floor(args.batch_size, d, f, args.threads))
        log(f"round {rnd + 1}/{args.rounds} fp32 encoder matmul floor: {floors[-1]:,.0f} tokens/s")

    cmd = " ".join(["python", os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])])
    header = [f"### Peers, side by side: `{cmd}`", "",
              f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit {git_commit()}",
              f"- machine: {machine(args.threads)}; load average at the end {os.getloadavg()[0]:.2f}",
              f"- data: {what}",
              f"- every run: TopK, d {d}, F {f}, k {args.k}, batch {args.batch_size}, {steps} steps on the same "
              f"batches in the same order, learning rate {lr:.3g} (2e-4 / sqrt(F / 2^14) unless --lr), seed "
              f"{args.seed}; {args.rounds} round(s), runs alternating; tokens/s = training tokens / seconds of "
              f"the training loop (set-up, evaluation, saving excluded)",
              f"- held-out FVU = sum |x - x_hat|^2 / sum |x - mean(x)|^2 over the {held.shape[0]:,} held-out rows; "
              f"dead = never fires on the last {dead_window:,} training tokens; both from the final weights",
              "- peak RSS = the worker process's VmHWM (all workers hold the same batches file in memory)"]
    print(render(summarize(results), runs, floors, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
