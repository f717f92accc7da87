"""Evaluation speed: the spliced evaluation against the plain forward passes it needs, and feature
statistics in one streaming pass over a cache (time, peak memory at two cache sizes).

    python benchmarks/bench_eval.py                       # both parts, CPU-sized defaults
    python benchmarks/bench_eval.py --part splice --contexts 8 --batch-contexts 2
    python benchmarks/bench_eval.py --part features --tokens 1000000 --cache cache/acts-1m

1. Spliced evaluation (`evals.spliced_losses`: clean, SAE, zero-, mean-ablated and error-term
   variants stacked into one forward pass per batch, plus the SAE encode/decode, log-softmaxes, CE
   and KL) against the plain `lm.bridge(tokens)` passes it needs over the same contexts, no hooks,
   no loss computed: one pass per variant per batch, and the same passes stacked into one batch
   (the stricter baseline: it isolates the hook, SAE and loss overhead). Goal: ratio <= 1.25.
   Runs alternate, median of `--repeats`.
2. Feature statistics (`evals.cache_pass`: densities, dead/dense counts, activation sums and maxima,
   plus the reconstruction sums) for a TopK SAE with 4608 features (d 576, k 32) over a cache, in a
   fresh process each, at `--tokens / 10` and `--tokens` rows: time, tokens/s and peak RSS. Without
   `--cache`, a cache of random float32 activations is written with `harvesting.CacheWriter` (the
   encode costs the same whatever the values; the table says which kind was used).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine_info import cpu_model

HOOK = "blocks.8.hook_resid_post"


def machine() -> str:
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}"


def table(rows: list[list[str]], head: list[str]) -> str:
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in rows])


def random_sae(d: int, features: int, k: int, hook: str, device):
    from saes import SAEConfig, build_sae

    return build_sae(SAEConfig(architecture="topk", d_in=d, num_features=features, k=k, hook=hook),
                     device=device, generator=torch.Generator().manual_seed(0)).eval()


def bench_splice(args) -> None:
    from evals import corpus_contexts, spliced_losses
    from evals.splice import VARIANTS
    from workbench.device import resolve_device
    from workbench.models import load_model

    device = resolve_device(args.device)
    lm = load_model(args.model, device=device)
    sae = random_sae(lm.d_model, 8 * lm.d_model, 32, HOOK, device) if not args.sae else None
    if args.sae:
        from evals import load_for_eval

        sae = load_for_eval(args.sae, device=device)
    hook = sae.cfg.hook or HOOK
    ctx = list(corpus_contexts(lm, "wiki-vital", context_length=args.context_length, max_contexts=args.contexts,
                               batch_contexts=args.batch_contexts))
    mean = torch.zeros(lm.d_model, device=device)
    v = len(VARIANTS)
    tokens = sum(int(c.tokens.numel()) for c in ctx)

    def plain_separate() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for c in ctx:
                for _ in range(v):
                    lm.bridge(c.tokens.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def plain_stacked() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for c in ctx:
                lm.bridge(c.tokens.to(device).repeat(v, 1))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def spliced() -> float:
        t = time.perf_counter()
        spliced_losses(lm, sae, hook, ctx, mean=mean, error_term=True, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    paths = {
        f"{v} plain passes per batch of {args.batch_contexts} (lm.bridge, no hooks, no loss)": plain_separate,
        f"1 plain pass per batch, the {v} copies stacked ({v * args.batch_contexts} contexts; no hooks, no loss)": plain_stacked,
        f"spliced_losses: {v} variants stacked, SAE encode/decode, CE + KL": spliced,
    }
    for f in paths.values():  # warm-up
        f()
    runs: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.repeats):
        for k, f in paths.items():
            runs[k].append(f())
    med = {k: statistics.median(x) for k, x in runs.items()}
    names = list(paths)
    rows = [[k, f"{med[k]:.2f}", " ".join(f"{x:.2f}" for x in runs[k]), f"{med[k] / med[names[0]]:.2f}",
             f"{med[k] / med[names[1]]:.2f}"] for k in names]
    n_ctx = sum(int(c.tokens.shape[0]) for c in ctx)
    print(f"\n1. spliced evaluation vs the plain forward passes it needs: {lm.model_id}, SAE at {hook} "
          f"({sae.num_features} features), {n_ctx} contexts x {args.context_length} tokens ({tokens:,} tokens), "
          f"variants {', '.join(VARIANTS)}, median of {args.repeats} alternating runs")
    print(table(rows, ["path", "seconds", "runs (s)", "vs separate", "vs stacked plain"]))


def write_random_cache(path: Path, tokens: int, d: int, shard: int = 65_536) -> None:
    from harvesting import CacheWriter

    w = CacheWriter(path, {HOOK: d}, "float32", shard_tokens=shard, header={"context_length": 128})
    g = torch.Generator().manual_seed(0)
    done, ctx = 0, 0
    while done < tokens:
        n = min(shard, tokens - done)
        ids = {"token_ids": torch.zeros(n, dtype=torch.int32), "doc_ids": torch.zeros(n, dtype=torch.int32),
               "context_ids": torch.arange(ctx, ctx + n, dtype=torch.int64) // 128,
               "positions": (torch.arange(n) % 128).to(torch.int32)}
        w.add({HOOK: torch.randn(n, d, generator=g)}, ids, contexts=(n + 127) // 128)
        done += n
        ctx += (n + 127) // 128
    w.finish()


def features_child(cache: str, hook: str, tokens: int, device: str) -> None:
    """Run in a fresh process: one feature-statistics pass, print JSON (time, peak RSS)."""
    from evals import cache_pass
    from harvesting import CacheReader

    reader = CacheReader(cache)
    sae = random_sae(reader.d_model(hook), 4608, 32, hook, device)
    t = time.perf_counter()
    res = cache_pass(sae, reader, hook, split="all", max_tokens=tokens, device=device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens": res.features.tokens, "seconds": dt, "rss_mib": rss,
                      "dead": res.features.summary()["dead"]}))


def bench_features(args) -> None:
    from harvesting import CacheReader

    tmp = None
    cache = args.cache
    kind = "harvested"
    if not cache:
        tmp = tempfile.TemporaryDirectory(dir=args.tmp)
        cache = str(Path(tmp.name) / "random-cache")
        print(f"writing a {args.tokens:,}-row random cache (d 576, float32) to {cache} ...", flush=True)
        write_random_cache(Path(cache), args.tokens, 576)
        kind = "random float32 (CacheWriter)"
    hook = HOOK if HOOK in CacheReader(cache).hooks else CacheReader(cache).hooks[0]
    total = CacheReader(cache).num_tokens
    rows = []
    for n in (min(total, args.tokens) // 10, min(total, args.tokens)):
        out = subprocess.run([sys.executable, __file__, "--child", cache, hook, str(n), args.device],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([f"{r['tokens']:,}", f"{r['seconds']:.1f}", f"{r['tokens'] / r['seconds']:,.0f}",
                     f"{r['rss_mib']:.0f}"])
    print(f"\n2. feature statistics in one streaming pass: TopK SAE, 4608 features, d 576, k 32, batches of 4096, "
          f"device {args.device}; cache: {kind}, hook {hook}; fresh process per row")
    print(table(rows, ["tokens", "seconds", "tokens/s", "peak RSS MiB"]))
    if tmp is not None:
        tmp.cleanup()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        features_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["splice", "features", "both"], default="both")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sae", default="", help="an SAE directory (default: a random TopK SAE at blocks.8, 8x, k 32)")
    p.add_argument("--contexts", type=int, default=8)
    p.add_argument("--batch-contexts", type=int, default=2)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", default="", help="a harvested cache for part 2 (default: write a random one)")
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--tmp", default=None, help="where to write the random cache")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    if args.part in ("splice", "both"):
        bench_splice(args)
    if args.part in ("features", "both"):
        bench_features(args)


if __name__ == "__main__":
    main()
