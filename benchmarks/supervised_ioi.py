"""Supervised dictionaries against SAEs on IOI (Makelov, Lange, Nanda 2024) with the offline model.

    .venv/bin/python benchmarks/supervised_ioi.py --out cache/ioi/bench \\
        --sae quickstart-b8=cache/quickstart/saes/blocks.8.hook_resid_post/topk-k32-x8 \\
              ioi-b4=cache/ioi/saes-b4/blocks.4.hook_resid_post/topk-k32-x8 \\
        --task-sae-hook blocks.8.hook_resid_post --fit 300 --test 24

Steps: the model's accuracy and LD on the test split (printed first); a task-trained SAE (TopK,
trained on residual activations of train-split IOI prompts only, every position but BOS, as the
paper trains its task SAEs on task data) unless --task-sae-hook is empty; then one supervised
evaluation over every SAE's hook point at the END and S2 positions: rows per site, attribute and
SAE. Writes results.json after every site (a killed run keeps what it measured) and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def train_task_sae(lm, task, hook: str, prompts: int, out: Path, k: int, expansion: int, epochs: int, seed: int):
    """A TopK SAE trained only on IOI train-split activations at `hook` (every position but the prefix)."""
    from saes import TensorSource, TrainConfig, load_sae, train
    from workbench.hooks import capture

    batch = task.prompts(prompts, "train", seed=seed + 1000)  # other prompts than the dictionaries' fit split
    rows = []
    for s in range(0, len(batch), 64):
        acts = capture(lm, batch.tokens[s:s + 64], [hook], stop=True)[hook]
        rows.append(acts[:, len(task.prefix):].reshape(-1, acts.shape[-1]).float())
    x = torch.cat(rows)
    src = TensorSource(x, hook=hook, model_id=lm.model_id)
    cfg = TrainConfig(hook=(hook,), arch=("topk",), k=(k,), expansion=(expansion,), out=str(out), epochs=epochs,
                      batch_size=512, heldout_fraction=0.05, progress=False, device="cpu", seed=seed)
    summary = train(cfg, src)
    return load_sae(str(out)), {"rows": int(x.shape[0]), "prompts": prompts, "k": k, "expansion": expansion,
                                "epochs": epochs, "summary": {k_: v for k_, v in summary.items() if k_ != "saes"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sae", nargs="*", default=[], help="SAE directories as NAME=DIR (each at its own hook point)")
    ap.add_argument("--task-sae-hook", default="blocks.8.hook_resid_post", help="'' skips the task-trained SAE")
    ap.add_argument("--task-sae-prompts", type=int, default=600)
    ap.add_argument("--task-sae-k", type=int, default=16)
    ap.add_argument("--task-sae-expansion", type=int, default=2)
    ap.add_argument("--task-sae-epochs", type=int, default=20)
    ap.add_argument("--hooks", nargs="*", default=[], help="sites' hook points in order (default: the SAEs')")
    ap.add_argument("--positions", nargs="*", default=["END", "S2"])
    ap.add_argument("--fit", type=int, default=300)
    ap.add_argument("--test", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="cache/ioi/bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from evals.loading import load_for_eval
    from evals.supervised.run import SupervisedConfig, format_table, supervised_eval
    from evals.tasks import make_task
    from workbench.models import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    lm = load_model(args.model)
    task = make_task("ioi", lm)
    saes = {}
    for ref in args.sae:
        name, _, path = ref.rpartition("=")
        saes[name or Path(path).name] = load_for_eval(path)
    meta: dict = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "model": lm.model_id, "task": task.describe(), "saes": {n: s.cfg.hook for n, s in saes.items()}}
    if args.task_sae_hook:
        ts, info = train_task_sae(lm, task, args.task_sae_hook, args.task_sae_prompts, out / "task_sae",
                                  args.task_sae_k, args.task_sae_expansion, args.task_sae_epochs, 0)
        saes["task-ioi"] = ts
        meta["task_sae"] = info
        print(f"task SAE: {info['rows']} rows, {time.time() - t0:.0f}s", flush=True)
    hooks = tuple(args.hooks) or tuple(dict.fromkeys(s.cfg.hook for s in
                                                      sorted(saes.values(), key=lambda s: s.cfg.hook, reverse=True)))
    cfg = SupervisedConfig(task="ioi", task_hooks=hooks, task_positions=tuple(args.positions),
                           task_fit_prompts=args.fit, task_test_prompts=args.test)

    def save(res):
        (out / "results.json").write_text(json.dumps(dict(meta, **res), indent=1, default=str))
        (out / "table.txt").write_text(format_table(res) + "\n")

    res = supervised_eval(lm, saes, cfg, progress=True, on_site=save)
    save(res)
    print(format_table(res))
    print(f"total {time.time() - t0:.0f}s; results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
