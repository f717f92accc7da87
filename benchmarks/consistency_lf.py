"""Consistency steering (LF-Steering, arXiv 2501.11036) on the offline model, with its controls.

Runs `steering.consistency.run_consistency` (what `sae steer-consistency` runs) once per split seed
and prints, per seed: the probe's layer scores, the chosen features (with their template eta^2),
held-out consistency before and after with 95% bootstrap intervals over facts, the change, the
DiffMean-of-consistency vector beside it and the random-feature null. Pass several --sae (one per
layer) to let the per-layer probe choose among them.

    python benchmarks/consistency_lf.py --sae cache/quickstart/saes --out /tmp/consistency --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    from saes import load_sae
    from steering.consistency import CANDIDATES, ConsistencyConfig, format_summary, run_consistency
    from steering.setup import load_model_for

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", nargs="+", default=["cache/quickstart/saes"])
    ap.add_argument("--out", default="/tmp/consistency")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--diffmean-coeffs", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--null-draws", type=int, default=10)
    ap.add_argument("--probe-every", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--neutral", type=int, default=8)
    a = ap.parse_args()
    t0 = time.perf_counter()
    saes = [load_sae(d) for d in a.sae]
    lm = load_model_for(saes[0])
    print(f"loaded model and {len(saes)} SAE(s) in {time.perf_counter() - t0:.0f} s; {len(CANDIDATES)} candidate facts", flush=True)
    results = {}
    for seed in a.seeds:
        t = time.perf_counter()
        cfg = ConsistencyConfig(sae=tuple(a.sae), out=str(Path(a.out) / f"seed{seed}"), features=a.features,
                                alphas=tuple(a.alphas), diffmean_coeffs=tuple(a.diffmean_coeffs),
                                null_draws=a.null_draws, probe_every=a.probe_every, max_new_tokens=a.max_new_tokens,
                                neutral=a.neutral, seed=seed)
        s = run_consistency(cfg, lm, saes)
        results[seed] = s
        print(f"--- split seed {seed} ({time.perf_counter() - t:.0f} s)")
        print(format_summary(s))
        print("probe AUC by layer: " + ", ".join(f"{h.split('.')[1]}: {v:.3f}" for h, v in s["probe_auc"].items()))
        f = s["features"]
        print(f"features {f['ids']} (template eta^2 max {max(f['template_eta2']):.2f}; {f['eligible']} eligible, "
              f"{f['dropped_template']} firing features dropped as template)", flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps({"args": vars(a), "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
