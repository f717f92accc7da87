"""Feature selection for steering: what scoring every feature of an SAE costs, against the plain way.

    python benchmarks/bench_selection.py                      # quickstart SAE (run scripts/quickstart.sh first)
    python benchmarks/bench_selection.py --sae DIR --plain-features 32 --sample 256

Two scores the issue asks to run over every feature:
- the output score (Arad et al.): each feature added at the last position of a neutral prompt.
  Ours puts features on the batch dimension and runs only the last token on a copy of the prompt's
  KV cache. Baselines, on a sample of features (rate extrapolated to all of them): the same batches
  re-running the whole prompt (`use_cache=False`), and the plain loop, one forward pass per feature.
- the gradient score: d log p(target tokens) / d coefficient at 0, for every feature from one
  backward pass over the prompts. Baseline: the plain central finite difference, two steered
  forward passes per feature, on a sample (extrapolated).

Each fast path is also checked against its baseline on the sampled features (largest absolute
difference of the output score; largest relative difference of the gradient against the finite
difference), so a speed-up that changed the answer shows in the same table. One torch thread by
default: on this shared 2-core machine two threads are slower (README, Performance).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", default="cache/quickstart/saes", help="an SAE directory (default: the quickstart's)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--concept", default="ocean", help="whose target words the gradient score reads")
    p.add_argument("--prompts", type=int, default=24, help="prompts the gradient score averages over")
    p.add_argument("--sample", type=int, default=256, help="features for the re-run-the-prompt baseline")
    p.add_argument("--plain-features", type=int, default=32, help="features for the plain one-pass-each loops")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from saes import load_sae
    from steering import add_feature
    from steering.concepts import MORE_STEER_PROMPTS, STEER_PROMPTS, load_concept
    from steering.measures import Judge
    from steering.positions import Positions
    from steering.selection.gradient import gradient_scores, target_objective
    from steering.selection.output import lens_tokens, output_scores
    from workbench.errors import WorkbenchError
    from workbench.models import load_model

    torch.set_num_threads(a.threads)
    try:
        sae = load_sae(a.sae).eval()
    except WorkbenchError as e:
        print(f"bench_selection: {e} (run `bash scripts/quickstart.sh` first, or give --sae)", file=sys.stderr)
        return 2
    lm = load_model(a.model)
    F = sae.num_features
    g = torch.Generator().manual_seed(0)
    sample = torch.randperm(F, generator=g)[: a.sample]
    plain = sample[: a.plain_features]
    lens = lens_tokens(lm, sae)  # shared by every path: the logit lens is not what is being timed
    rows: list[tuple[str, int, float, float, str]] = []  # name, features, s, ours (s), agreement

    ours, t_ours = timed(lambda: output_scores(lm, sae, lens=lens))
    rows.append(("output score, batched + KV-cached prefix (ours)", F, t_ours, t_ours, "-"))
    rerun, t_rerun = timed(lambda: output_scores(lm, sae, sample, lens=lens[sample], use_cache=False))
    d = float((rerun.output - ours.output[sample]).abs().max())
    rows.append(("output score, batched, prompt re-run per row", len(sample), t_rerun, t_ours, f"max abs diff {d:.1e}"))
    one, t_one = timed(lambda: output_scores(lm, sae, plain, lens=lens[plain], use_cache=False, batch_size=1))
    d = float((one.output - ours.output[plain]).abs().max())
    rows.append(("output score, plain: one forward pass per feature", len(plain), t_one, t_ours, f"max abs diff {d:.1e}"))

    prompts = (STEER_PROMPTS + MORE_STEER_PROMPTS)[: a.prompts]
    targets = Judge(sae.cfg.hook, target_words=tuple(load_concept(a.concept).target_words)).target_ids(lm)
    pos = Positions("all")
    grad, t_grad = timed(lambda: gradient_scores(lm, sae, prompts, targets, pos))
    rows.append((f"gradient score, one backward pass over {len(prompts)} prompts (ours)", F, t_grad, t_grad, "-"))
    eps = 1e-2

    def finite_difference() -> torch.Tensor:
        out = []
        with torch.no_grad():
            for f in plain.tolist():
                up = target_objective(lm, prompts, targets, [add_feature(sae, f, eps, positions=pos)])
                down = target_objective(lm, prompts, targets, [add_feature(sae, f, -eps, positions=pos)])
                out.append(float(up - down) / (2 * eps))
        return torch.tensor(out)

    fd, t_fd = timed(finite_difference)
    rel = float(((grad[plain] - fd).abs() / fd.abs().clamp_min(1e-3)).max())
    rows.append(("gradient score, plain: central finite difference per feature", len(plain), t_fd, t_grad,
                 f"max rel diff {rel:.1e}"))

    print("# Scoring every feature for steering selection\n")
    print(f"Command: `python {' '.join(shlex.quote(x) for x in sys.argv)}`  ")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{a.threads} thread(s); SAE {a.sae} ({F} features at {sae.cfg.hook}); model {a.model}\n")
    print("| path | features timed | seconds | features/s | all features (s; extrapolated where sampled) "
          "| x slower than ours | agreement with ours |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, t, ours_t, agree in rows:
        full = t * F / n
        print(f"| {name} | {n} | {t:.2f} | {n / t:.1f} | {full:.3g} | {full / ours_t:.3g} | {agree} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
