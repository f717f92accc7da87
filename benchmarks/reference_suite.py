"""The reference suite: TopK SAEs at a scale that means something, and how they improve with tokens.

    python benchmarks/reference_suite.py                      # 10M tokens of debian-text, two layers (hours on 2 CPUs)
    python benchmarks/reference_suite.py --device cuda        # the same on a GPU (minutes)
    python benchmarks/reference_suite.py --tokens 400000 --budgets 100000 300000   # a quick pass
    python benchmarks/reference_suite.py --report-only        # table and plot from what has finished

What it does, through the `sae` command line a user would type (so the suite also checks that path):

1. `sae harvest` the offline model (smollm2-135m) over the `debian-text` corpus (26M tokens; see
   README) at two layers in one pass, stored as bfloat16 (half the disk; the trainer upcasts);
2. for each token budget (default 0.1M, 1M and 9.8M tokens seen: the 10M cache less its 1% held out), one `sae train` run of every TopK
   SAE of the grid (two layers x two widths x two k) in one pass over the cache: each budget is its
   own run with its own warm-up, so a point on the curve is what a user training for that many
   tokens gets, not a snapshot of a longer run;
3. `sae eval` of every SAE on the cache's held-out rows (the same rows for every budget, since the
   budgets share the cache and its held-out fraction) and its held-out contexts spliced into the
   model: held-out FVU, CE loss score and KL score, L0, dead features (never firing on the held-out
   split: `sae eval`'s default counts them over every cached token, one encode pass over 10M tokens per
   SAE, which on this CPU would cost more than the training; the held-out 1% holds 100k tokens);
   the SAEs of one hook share the spliced loss's forward passes (`evals.evaluate_many`);
4. the scaling table (markdown, printed and written to `<root>/scaling.md`) and the plot
   (`<root>/scaling.png`: held-out FVU and CE loss score against tokens seen, log x axis).

Every stage resumes: re-running the command continues an interrupted harvest or training run
(the `sae` verbs resume themselves) and skips SAEs whose eval.json is already written with the
same evaluation settings. The SAEs stay under `<root>/saes-<budget>/` for the steering and
supervised-dictionary benchmarks (`--sae <root>/saes-9800000/blocks.8.hook_resid_post/topk-k32-x8`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
EVAL_KEYS = ("ce_contexts", "heldout_fraction", "splice_positions", "density_split")


@dataclass(frozen=True)
class SuiteSae:
    """One SAE of the grid at one token budget, and where its files live."""

    budget: int
    hook: str
    k: int
    expansion: int
    root: Path

    @property
    def run_dir(self) -> Path:
        return self.root / f"saes-{self.budget}"

    @property
    def sae_dir(self) -> Path:
        from saes.registry import sae_class

        return self.run_dir / sae_class("topk").run_name(self.hook, self.k, self.expansion)


def hooks_for(layers: list[int]) -> list[str]:
    return [f"blocks.{layer}.hook_resid_post" for layer in layers]


def suite_grid(root: Path, budgets: list[int], layers: list[int], ks: list[int], expansions: list[int]) -> list[SuiteSae]:
    """Every SAE the suite trains, budget-major so that the cheap budgets finish (and report) first."""
    return [SuiteSae(b, h, k, x, root) for b in sorted(budgets) for h in hooks_for(layers) for x in expansions for k in ks]


def check_budgets(budgets: list[int], tokens: int, heldout_fraction: float) -> None:
    """A budget past the cache's training split would silently train on fewer tokens than its label says."""
    train_tokens = int(tokens * (1 - heldout_fraction))
    too_big = [b for b in budgets if b > train_tokens]
    if too_big:
        raise SystemExit(f"reference_suite: budget(s) {too_big} exceed the cache's training split "
                         f"({train_tokens:,} of --tokens {tokens:,}); raise --tokens or drop them")


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def sae_command() -> list[str]:
    """The venv's `sae` entry point, beside this interpreter."""
    exe = Path(sys.executable).with_name("sae")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "workbench.cli"]


def harvest(args: argparse.Namespace, env: dict[str, str]) -> Path:
    acts = args.root / "acts"
    manifest = acts / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("status") == "complete":
        return acts
    run(sae_command() + ["harvest", "--model", args.model, "--corpus", args.corpus, "--hooks", *hooks_for(args.layers),
                         "--tokens", str(args.tokens), "--dtype", "bfloat16", "--device", args.device,
                         "--out", str(acts)], env)
    return acts


def train(args: argparse.Namespace, acts: Path, budget: int, env: dict[str, str]) -> None:
    out = args.root / f"saes-{budget}"
    if (out / "summary.json").exists():
        return
    run(sae_command() + ["train", "--cache", str(acts), "--hooks", *hooks_for(args.layers), "--arch", "topk",
                         "--k", *map(str, args.ks), "--expansion", *map(str, args.expansions),
                         "--max-tokens", str(budget), "--batch-size", str(args.batch_size), "--heldout-fraction", str(args.heldout_fraction),
                         "--seed", str(args.seed), "--device", args.device, "--out", str(out)], env)


def eval_settings_match(eval_json: Path, args: argparse.Namespace) -> bool:
    if not eval_json.exists():
        return False
    settings = json.loads(eval_json.read_text()).get("settings", {})
    want = {"ce_contexts": args.ce_contexts, "heldout_fraction": args.heldout_fraction, "splice_positions": "text",
            "density_split": "heldout"}
    return all(settings.get(k) == want[k] for k in EVAL_KEYS)


def evaluate(args: argparse.Namespace, acts: Path, saes: list[SuiteSae], env: dict[str, str]) -> None:
    todo = [s for s in saes if s.sae_dir.exists() and not eval_settings_match(s.sae_dir / "eval.json", args)]
    if todo:
        run(sae_command() + ["eval", "--sae", *[str(s.sae_dir) for s in todo], "--cache", str(acts),
                             "--ce-contexts", str(args.ce_contexts), "--heldout-fraction", str(args.heldout_fraction),
                             "--splice-positions", "text", "--density-split", "heldout", "--no-probing", "--device", args.device,
                             "--plot", str(args.root / f"pareto-{todo[0].budget}.png")], env)


@dataclass
class Row:
    """One evaluated SAE: what the table and the plot show."""

    sae: SuiteSae
    tokens_seen: int
    fvu: float
    ce_score: float
    kl_score: float
    l0: float
    dead_pct: float
    heldout_tokens: int
    ce_tokens: int
    fvu_ci: tuple[float, float] = (float("nan"), float("nan"))
    ce_ci: tuple[float, float] = (float("nan"), float("nan"))


def interval(block: dict, key: str) -> tuple[float, float]:
    """The bootstrap 95% interval `sae eval` stored for one metric; NaNs where it stored none (too few rows)."""
    iv = block.get("intervals", {}).get(key)
    return (iv["low"], iv["high"]) if iv else (float("nan"), float("nan"))


def read_row(sae: SuiteSae) -> Row | None:
    """The row of a finished SAE, or None while its training or evaluation is still to come."""
    summary, ev = sae.run_dir / "summary.json", sae.sae_dir / "eval.json"
    if not (summary.exists() and ev.exists()):
        return None
    s, e = json.loads(summary.read_text()), json.loads(ev.read_text())
    rec, spl = e["reconstruction"], e.get("spliced", {})
    return Row(sae, int(s["tokens"]), rec["fvu"], spl.get("ce_loss_score", float("nan")),
               spl.get("kl_div_score", float("nan")), rec["l0"], e["health"]["dead_pct"], int(rec["tokens"]),
               int(spl.get("ce_tokens", 0)), interval(rec, "fvu"), interval(spl, "ce_loss_score"))


def table(rows: list[Row]) -> str:
    """Bracketed: the bootstrap 95% intervals of `sae eval` (FVU over blocks of rows, CE score over contexts)."""
    head = ("| hook | F | k | tokens seen | held-out FVU [95% CI] | CE loss score [95% CI] | KL score | L0 | "
            "dead % (held-out) | held-out tokens | CE tokens |\n|---|---|---|---|---|---|---|---|---|---|---|")
    body = [f"| {r.sae.hook} | x{r.sae.expansion} | {r.sae.k} | {r.tokens_seen:,} | {r.fvu:.4f} "
            f"[{r.fvu_ci[0]:.4f}, {r.fvu_ci[1]:.4f}] | {r.ce_score:.4f} [{r.ce_ci[0]:.4f}, {r.ce_ci[1]:.4f}] | "
            f"{r.kl_score:.4f} | {r.l0:.1f} | {r.dead_pct:.1f} | {r.heldout_tokens:,} | {r.ce_tokens:,} |"
            for r in sorted(rows, key=lambda r: (r.sae.hook, r.sae.expansion, r.sae.k, r.tokens_seen))]
    return "\n".join([head, *body])


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    curves: dict[tuple, list[Row]] = {}
    for r in rows:
        curves.setdefault((r.sae.hook, r.sae.expansion, r.sae.k), []).append(r)
    for (hook, x, k), pts in sorted(curves.items()):
        pts.sort(key=lambda r: r.tokens_seen)
        label = f"{hook.split('.hook')[0]} x{x} k{k}"
        xs = [r.tokens_seen for r in pts]
        for ax, val, ci in ((axes[0], "fvu", "fvu_ci"), (axes[1], "ce_score", "ce_ci")):
            ys = [getattr(r, val) for r in pts]
            err = [[y - getattr(r, ci)[0] for y, r in zip(ys, pts)], [getattr(r, ci)[1] - y for y, r in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    for ax, name in zip(axes, ("held-out FVU (lower is better)", "CE loss score (higher is better)")):
        ax.set_xscale("log")
        ax.set_xlabel("training tokens seen")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    from machine_info import bf16_units, cpu_model

    return f"{cpu_model()} ({bf16_units()}), {os.cpu_count()} cores, torch {torch.__version__}"


def report(args: argparse.Namespace, saes: list[SuiteSae]) -> str:
    rows = [r for r in (read_row(s) for s in saes) if r is not None]
    text = "\n".join([
        f"command: python {shlex.join(['benchmarks/reference_suite.py', *sys.argv[1:]])}",
        f"machine: {machine(args.device)}",
        f"date: {datetime.date.today().isoformat()}; cache: {args.root / 'acts'} ({args.tokens:,} tokens of "
        f"{args.corpus}, bfloat16); SAEs finished: {len(rows)} of {len(saes)}",
        "",
        table(rows),
    ])
    (args.root / "scaling.md").write_text(text + "\n")
    if rows:
        plot(rows, args.root / "scaling.png", f"TopK SAEs on {args.model} / {args.corpus} (bfloat16 cache)")
    return text


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "cache" / "reference", help="where the cache, SAEs and report go")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="debian-text")
    p.add_argument("--tokens", type=int, default=10_000_000, help="tokens harvested (the largest budget + held-out)")
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    p.add_argument("--ks", type=int, nargs="+", default=[32, 64])
    p.add_argument("--expansions", type=int, nargs="+", default=[8, 16])
    p.add_argument("--budgets", type=int, nargs="+", default=[100_000, 1_000_000, 9_800_000],
                   help="training tokens per run; the largest defaults to what 10M tokens leave after the held-out 1%%")
    p.add_argument("--batch-size", type=int, default=4096, help="tokens per optimiser step")
    p.add_argument("--heldout-fraction", type=float, default=0.01)
    p.add_argument("--ce-contexts", type=int, default=160, help="contexts for the spliced loss (SAEBench: 160 of 128 tokens)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    args.root = args.root.resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    saes = suite_grid(args.root, args.budgets, args.layers, args.ks, args.expansions)
    if not args.report_only:
        check_budgets(args.budgets, args.tokens, args.heldout_fraction)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        acts = harvest(args, env)
        for budget in sorted(args.budgets):
            train(args, acts, budget, env)
            evaluate(args, acts, [s for s in saes if s.budget == budget], env)
            print(report(args, saes), flush=True)
    print(report(args, saes))


if __name__ == "__main__":
    main()
