"""Feature dashboards over a large cache: time and peak memory of the one-pass build, and its
memory at two cache sizes (it must not grow with the cache).

    python benchmarks/bench_features.py                        # 500k and 1M tokens, F=4608, k=32, d=576
    python benchmarks/bench_features.py --tokens 100000 --features 1024

The caches are synthetic (this machine's 2 cores would need most of an hour to harvest 1M tokens
of SmolLM2): rows of a random low-rank-plus-noise Gaussian with SmolLM2-135M's width (576), token
ids drawn from a real tokenizer's vocabulary, written by the real `CacheWriter` in 65,536-row
shards. The SAE is a randomly initialised TopK SAE (F=4608, k=32): the pass costs the same for
trained weights, since every token still has exactly k active features. The logit lens uses a
random unembedding of the tokenizer's vocabulary size.

Baseline, side by side (at the largest size): a bare pass over the same cache that only reads
each shard and encodes it with the SAE (what any dashboard needs at least); the difference is
what the dashboards add. Peak memory at two sizes shows it does not grow with the cache.
Each measurement runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOOK = "blocks.8.hook_resid_post"


def _tokenizer():
    from transformers import AutoTokenizer

    from workbench.models import offline_path

    return AutoTokenizer.from_pretrained(str(offline_path("minilm-l6")))


def make_cache(path: Path, tokens: int, d: int, vocab: int, seed: int = 0) -> None:
    from harvesting import CacheWriter

    if (path / "manifest.json").is_file() and json.loads((path / "manifest.json").read_text())["status"] == "complete":
        return
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(64, d, generator=g) / 8
    w = CacheWriter(path, {HOOK: d}, "float32", 65_536, {"model": {"id": "synthetic", "modality": "text"}},
                    ("token_ids", "doc_ids", "context_ids", "positions"))
    ctx_len, done, ctx = 128, 0, 0
    while done < tokens:
        n_ctx = min(64, (tokens - done + ctx_len - 1) // ctx_len)
        n = n_ctx * ctx_len
        x = torch.randn(n, 64, generator=g) @ basis + 0.3 * torch.randn(n, d, generator=g)
        ids = {"token_ids": torch.randint(1000, vocab, (n,), generator=g),
               "doc_ids": torch.arange(ctx, ctx + n_ctx).repeat_interleave(ctx_len),
               "context_ids": torch.arange(ctx, ctx + n_ctx).repeat_interleave(ctx_len),
               "positions": torch.arange(ctx_len).repeat(n_ctx)}
        w.add({HOOK: x}, ids, n_ctx)
        done += n
        ctx += n_ctx
    w.finish()


def make_sae(path: Path, d: int, features: int, k: int) -> None:
    from saes import SAEConfig, build_sae, save_sae

    if (path / "cfg.json").is_file():
        return
    sae = build_sae(SAEConfig(architecture="topk", d_in=d, num_features=features, k=k, hook=HOOK, model_id="synthetic"),
                    generator=torch.Generator().manual_seed(1))
    save_sae(sae, path)


def child(mode: str, cache: Path, sae_dir: Path, out: Path) -> dict:
    """One measurement in this (fresh) process."""
    from types import SimpleNamespace

    from harvesting import CacheReader
    from saes import load_sae

    t0 = time.perf_counter()
    if mode == "encode":
        sae = load_sae(sae_dir)
        r = CacheReader(cache)
        nnz = 0
        with torch.no_grad():
            for i in range(len(r.shards)):
                x = r.load_shard(i, [HOOK])[HOOK]
                for a in range(0, x.shape[0], 4096):
                    nnz += sae.encode(x[a:a + 4096]).nnz
        res = {"seconds": time.perf_counter() - t0}
    else:
        from evals.browser import build_browser
        from evals.features import FeatureConfig, build_features

        tok = _tokenizer()
        lm = SimpleNamespace(unembed=torch.randn(576, len(tok), generator=torch.Generator().manual_seed(2)) / 24,
                             tokenizer=tok)
        feats = build_features(sae_dir, cache, out, FeatureConfig(), model=lm, progress=False, rebuild=True)
        t1 = time.perf_counter()
        res = {"seconds": t1 - t0}
        if mode == "browse":
            build_browser(feats, out.parent / (out.name + "_site"), progress=False)
            res["browser_seconds"] = time.perf_counter() - t1
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[500_000, 1_000_000])
    p.add_argument("--features", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d-model", type=int, default=576)
    p.add_argument("--root", default=str(ROOT / "cache" / "bench_features"))
    p.add_argument("--child", nargs=4, metavar=("MODE", "CACHE", "SAE", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), Path(a.child[2]), Path(a.child[3]))))
        return
    root = Path(a.root)
    vocab = len(_tokenizer())
    sae_dir = root / f"sae_F{a.features}_k{a.k}"
    make_sae(sae_dir, a.d_model, a.features, a.k)
    rows = []
    for n in a.tokens:
        cache = root / f"cache_{n}"
        make_cache(cache, n, a.d_model, vocab)
        for mode in ("encode", "browse") if n == max(a.tokens) else ("features",):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(cache), str(sae_dir), str(root / f"features_{n}")],
                                 capture_output=True, text=True, check=True)
            rows.append((n, mode, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPU cores (torch threads {torch.get_num_threads()}), "
          f"torch {torch.__version__}, {platform.python_version()}")
    print(f"command: python benchmarks/bench_features.py --tokens {' '.join(map(str, a.tokens))} --features {a.features} "
          f"--k {a.k} --d-model {a.d_model}")
    print(f"SAE: TopK F={a.features} k={a.k} d={a.d_model}; synthetic float32 cache, 65,536-row shards\n")
    print(f"{'tokens':>10}  {'pass':<34} {'seconds':>8} {'tokens/s':>10} {'peak RSS MiB':>13}")
    for n, mode, r in rows:
        name = {"encode": "baseline: read + encode only", "features": "dashboards (sae browse data)",
                "browse": "dashboards (sae browse data)"}[mode]
        print(f"{n:>10,}  {name:<34} {r['seconds']:>8.1f} {n / r['seconds']:>10,.0f} {r['peak_rss_mib']:>13,.0f}")
        if "browser_seconds" in r:
            print(f"{n:>10,}  {'+ static browser (HTML pages)':<34} {r['browser_seconds']:>8.1f}")


if __name__ == "__main__":
    main()
