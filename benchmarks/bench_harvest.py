"""Harvest and reader throughput, each against its baseline in the same run.

    python benchmarks/bench_harvest.py              # all three tables
    python benchmarks/bench_harvest.py --skip-model # reader tables only (no model load)
    python benchmarks/bench_harvest.py --device cuda --skip-reader --skip-memory  # the harvest table on a GPU

1. `harvest()` (tokenize, pack, bridge forward with hooks and stop_at_layer, write checksummed
   shards) vs the same model's plain Hugging Face forward truncated after the deepest hooked
   layer, no hooks, no writing, over the same batches. Runs alternate so drift hits both.
   `--device` puts the model, the baseline's batches (moved there before its clock starts, so the
   baseline pays no copy) and the harvest on that device; CUDA is synchronised before each clock
   stops, so queued kernels count (issue 21: on a GPU, harvest >= 0.9x the plain forward).
2. The reader's shuffled batches/s vs the plainest fast sequential read of the same shard files
   (one memory-mapped slice per batch, copied once).
3. The reader's peak memory (RSS, measured in a fresh process) as the cache grows 10x.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harvesting import CacheReader, CacheWriter, HarvestConfig, harvest, load_model, row_gather  # noqa: E402
from harvesting.corpus import open_documents, pack_contexts  # noqa: E402
from machine_info import cpu_model  # noqa: E402
from workbench.device import resolve_device  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402


def machine(device: torch.device) -> str:
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock stopped after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


HOOKS = ("blocks.4.hook_resid_post", "blocks.8.hook_resid_post")


def bench_harvest(tokens: int, reps: int, device: torch.device, scratch: Path, model: str = "smollm2-135m",
                  corpus: str = "wiki-vital", hooks: tuple[str, ...] = HOOKS, ctx_len: int = 128, bs: int = 16) -> None:
    lm = load_model(model, device=device)
    stop = lm.stop_layer(list(hooks))
    hf = lm.bridge.original_model
    docs = open_documents(corpus, seed=0)
    contexts = pack_contexts(docs, lm.tokenizer, ctx_len, lm.prefix_ids, lm.suffix_ids, lm.separator_id, lm.pad_id)
    n_batches = -(-tokens // (bs * (ctx_len - 1)))
    batches = []
    for _ in range(n_batches):
        batches.append(torch.stack([next(contexts).input_ids for _ in range(bs)]).to(device))

    def plain() -> float:
        layers = hf.model.layers
        hf.model.layers = torch.nn.ModuleList(list(layers)[:stop])
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                for ids in batches:
                    hf.model(input_ids=ids, use_cache=False)
            sync(device)
            dt = time.perf_counter() - t0
        finally:
            hf.model.layers = layers
        return sum(int(b.numel() - b.shape[0]) for b in batches) / dt  # kept (non-BOS) tokens per second

    def ours(i: int) -> float:
        with tempfile.TemporaryDirectory(dir=scratch) as d:
            cfg = HarvestConfig(model=model, corpus=corpus, hooks=hooks, tokens=tokens, out=str(Path(d) / "acts"),
                                batch_size=bs, context_length=ctx_len, progress=False, device=str(device))
            t0 = time.perf_counter()
            harvest(cfg, model=lm)
            sync(device)
            dt = time.perf_counter() - t0
            return CacheReader(Path(d) / "acts").num_tokens / dt

    plain()  # warm-up
    p, h = [], []
    for i in range(reps):
        p.append(plain())
        h.append(ours(i))
    pm, hm = sorted(p)[len(p) // 2], sorted(h)[len(h) // 2]
    table(
        f"1. harvest vs plain HF forward truncated after layer {stop - 1}: {model} on {device}, {bs}x{ctx_len} "
        f"contexts, {tokens:,} tokens per run, hooks {', '.join(hooks)}, median of {reps} alternating runs",
        ["path", "tokens/s", "runs (tokens/s)", "ratio"],
        [["plain HF forward (no hooks, no writes)", f"{pm:,.0f}", " ".join(f"{x:,.0f}" for x in p), "1.00"],
         [f"sae harvest (bridge, {len(hooks)} hooks, float32 shards)", f"{hm:,.0f}", " ".join(f"{x:,.0f}" for x in h), f"{hm / pm:.2f}"]],
    )


def make_cache(path: Path, rows: int, d: int, shard_tokens: int) -> None:
    w = CacheWriter(path, {"h": d}, "float32", shard_tokens=shard_tokens, header={"model": {"id": "synthetic"}})
    g = torch.Generator().manual_seed(0)
    step = 4096
    for start in range(0, rows, step):
        n = min(step, rows - start)
        ids = torch.arange(start, start + n)
        w.add({"h": torch.randn(n, d, generator=g)}, {"token_ids": ids.int(), "doc_ids": ids.int(),
                                                      "context_ids": ids // 128, "positions": (ids % 128).int()},
              contexts=-(-n // 128))
    w.finish()


def bench_reader(root: Path, rows: int, d: int, batch: int, reps: int) -> None:
    """Shuffled batches against the plainest fast read of the same files, alternating runs.

    The baseline opens each shard once (`safe_open`, memory-mapped) and takes one slice per batch
    in file order, copied once into a tensor of its own: the one copy any loader must make to hand
    out a batch the caller may keep (a slice of the map would be a view of the page cache). The
    reader makes that same one copy as a gather of shuffled rows (in the caller's thread by default;
    the `prefetch=2` row moves it to a background thread, as the trainer does on CUDA).
    """
    from safetensors import safe_open

    path = root / f"r{rows}"
    make_cache(path, rows, d, 65_536)
    r = CacheReader(path)
    files = [path / s["files"]["h"]["file"] for s in r.shards]

    def sequential() -> float:
        t0 = time.perf_counter()
        n = 0
        for f in files:
            with safe_open(f, framework="pt") as st:
                acts = st.get_slice("acts")
                for i in range(0, acts.get_shape()[0] - batch + 1, batch):
                    acts[i:i + batch].clone()
                    n += 1
        return n / (time.perf_counter() - t0)

    native = row_gather.native_available()

    def shuffled(prefetch: int, world_size: int = 1) -> float:
        t0 = time.perf_counter()
        n = 0
        for _ in r.batches("h", batch, seed=0, split="all", prefetch=prefetch, world_size=world_size):
            n += 1
        return n / (time.perf_counter() - t0)

    def floor(compiled: bool = False) -> float:
        """Random rows from pages already mapped: no page faults, no bookkeeping, no thread; with
        `index_select`, or with the reader's compiled gather."""
        maps = [r.mapped_acts(i, "h") for i in range(len(r.shards))]
        for m in maps:
            m.sum()  # map every page first
        g = torch.Generator().manual_seed(0)
        idx = [[torch.randint(0, m.shape[0], (batch // len(maps[:4]),), generator=g) for m in maps[:4]] for _ in range(32)]
        out = torch.empty(batch, d)
        t0 = time.perf_counter()
        for parts in idx:
            if compiled:
                row_gather.gather_rows(maps[:4], parts, out, checked=False)
                continue
            a = 0
            for m, i in zip(maps, parts):
                torch.index_select(m, 0, i, out=out[a:a + i.numel()])
                a += i.numel()
        return len(idx) / (time.perf_counter() - t0)

    runs: dict[str, list[float]] = {"seq": [], "shuf0": [], "shuf": [], "rank4": [], "torch": [], "floor": []}
    if native:
        runs["cfloor"] = []
    sequential(), shuffled(0)  # page cache warm for both
    for _ in range(reps):
        runs["seq"].append(sequential())
        runs["shuf"].append(shuffled(2))
        runs["shuf0"].append(shuffled(0))
        runs["rank4"].append(shuffled(0, 4))
        with row_gather.torch_gathers():  # as on a machine without a C compiler
            runs["torch"].append(shuffled(0))
        runs["floor"].append(floor())
        if native:
            runs["cfloor"].append(floor(compiled=True))
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    names = {"seq": "sequential: one mmap slice per batch, copied once (no shuffle)",
             "shuf0": "CacheReader.batches(shuffle=True), caller's thread (default)",
             "shuf": "CacheReader.batches(shuffle=True, prefetch=2), background thread",
             "rank4": "rank 0 of 4 data-parallel ranks (its quarter of each batch)",
             "torch": "same reader, torch.index_select gathers (as without a C compiler)",
             "floor": "floor: index_select of random rows from pages already mapped",
             "cfloor": "floor, compiled gather: the reader's C loop on those rows"}
    table(f"2. reader: {rows:,} rows x d {d} float32 in shards of 65,536, batches of {batch}, median of {reps} "
          f"alternating runs (files in the page cache); shuffle: rows permuted within windows of 4 shards "
          f"(262,144 rows), window order permuted; an epoch is an exact permutation",
          ["path", "batches/s", "rows/s", "ms/batch", "runs (batches/s)", "ratio"],
          [[names[k], f"{m:,.0f}", f"{m * batch / (4 if k == 'rank4' else 1) / 1e6:,.2f}M", f"{1e3 / m:.2f}",
            " ".join(f"{x:,.0f}" for x in runs[k]),
            f"{m / med['seq']:.2f}"] for k, m in med.items()])


_PEAK = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from harvesting import CacheReader
r = CacheReader({path!r})
for b in r.batches("h", {batch}, seed=0, split="all"):
    pass
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


def bench_memory(root: Path, small: int, d: int, batch: int) -> None:
    out = []
    for rows in (small, 10 * small):
        path = root / f"m{rows}"
        make_cache(path, rows, d, 16_384)
        code = _PEAK.format(root=str(Path(__file__).resolve().parents[1]), path=str(path), batch=batch)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out.append((rows, int(res.stdout.strip().splitlines()[-1]) / 1024))
    table(f"3. reader peak memory (RSS of a fresh process reading one shuffled epoch; shards of 16,384 rows x d {d})",
          ["cache rows", "cache MiB", "peak RSS MiB", "ratio"],
          [[f"{r:,}", f"{r * d * 4 / 2**20:,.0f}", f"{m:,.0f}", f"{m / out[0][1]:.2f}"] for r, m in out])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=16_384, help="tokens per harvest run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="device of the harvest table: cpu, cuda, cuda:N or auto")
    ap.add_argument("--model", default="smollm2-135m", help="model of the harvest table (alias or local directory)")
    ap.add_argument("--corpus", default="wiki-vital", help="corpus of the harvest table (alias or local file)")
    ap.add_argument("--hooks", nargs="+", default=list(HOOKS))
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass")
    ap.add_argument("--scratch", default=str(Path(__file__).resolve().parents[1] / "cache"),
                    help="folder for the temporary caches (created)")
    ap.add_argument("--skip-model", action="store_true", help="skip the harvest table")
    ap.add_argument("--skip-reader", action="store_true", help="skip the reader table")
    ap.add_argument("--skip-memory", action="store_true", help="skip the peak-memory table")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)  # a bad value is one line before anything is loaded
    except WorkbenchError as e:
        print(f"bench_harvest.py: error: {e}", file=sys.stderr)
        return 2
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine(device)}")
    print(f"date:    {datetime.date.today()}")
    print(f"peak RSS of this process so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if not args.skip_model:
        bench_harvest(args.tokens, args.reps, device, scratch, args.model, args.corpus, tuple(args.hooks),
                      args.context_length, args.batch_size)
    with tempfile.TemporaryDirectory(dir=scratch) as d:
        if not args.skip_reader:
            bench_reader(Path(d), 524_288, 576, 4096, args.reps)
        if not args.skip_memory:
            bench_memory(Path(d), 163_840, 576, 4096)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
