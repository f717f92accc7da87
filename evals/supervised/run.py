"""The supervised evaluation of a task: the model's baseline first, then one row per site and attribute.

For each site (hook point, named position; by default the residual stream at S2 and END):
dictionaries are fitted on the train split's activations, and everything is judged on the test
split (other templates): clean and mean-ablated LD, sufficiency and necessity of the mean and MSE
dictionaries and of each SAE's reconstruction, edit accuracy of no intervention, of the supervised
edit and of the greedy SAE edit at each k, edit magnitudes, and (on the train split's prompts,
which are many and cheap: no patching) the features at F1 >= 0.8 per attribute, occlusion and
over-splitting counts. All interventions of a site run as one stacked batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from evals.supervised.dictionary import mean_dictionary, mse_dictionary
from evals.supervised.editing import greedy_edit, sae_edit_magnitude
from evals.supervised.interpretability import attribute_f1, occluded_values, split_features
from evals.supervised.patching import edit_accuracy, necessity, patched_logits, site_activations, sufficiency
from evals.tasks import make_task
from evals.tasks.base import TaskBatch
from workbench.errors import WorkbenchError


@dataclass
class SupervisedConfig:
    """How to run the supervised evaluation. Every field is also a `sae eval --task` flag."""

    task: str = field(default="", metadata={"help": "run the supervised evaluation on this task instead of the cache metrics (ioi)"})
    task_hooks: tuple[str, ...] = field(default=(), metadata={"help": "hook points for --task (default: the SAE's own)"})
    task_positions: tuple[str, ...] = field(default=("S2", "END"), metadata={"help": "named positions for --task (IOI: IO S1 S2 END)"})
    task_fit_prompts: int = field(default=600, metadata={"help": "train-split prompts the dictionaries are fitted on (and feature F1 is measured on)"})
    task_test_prompts: int = field(default=100, metadata={"help": "test-split prompts every intervention is judged on"})
    task_ks: tuple[int, ...] = field(default=(2, 4, 6), metadata={"help": "numbers of features the greedy SAE edit may use"})
    task_min_accuracy: float = field(default=0.75, metadata={"help": "refuse a model whose test accuracy (metric > 0) is below this (0 = never)"})
    task_batch: int = field(default=64, metadata={"help": "prompts per forward pass"})
    task_f1: float = field(default=0.8, metadata={"help": "F1 at or above which a feature counts as meaning an attribute"})
    task_max_union: int = field(default=10, metadata={"help": "most values in one predicate (unions of names)"})
    task_seed: int = field(default=0, metadata={"help": "seed of the task's prompts and counterfactuals"})


def task_baseline(lm, task, batch: TaskBatch, cfg: SupervisedConfig) -> tuple[dict[str, Any], Tensor]:
    """The model on the test split: accuracy (metric > 0), mean metric, top-1 accuracy; refuse near chance."""
    logits = patched_logits(lm, batch.tokens, None, batch.positions["END"], None, cfg.task_batch)
    ld = task.metric(logits, batch)
    base = {"prompts": len(batch), "accuracy": float((ld > 0).float().mean()), "ld_mean": float(ld.mean()),
            "ld_std": float(ld.std()) if len(batch) > 1 else 0.0,
            "top1": float((logits.argmax(-1) == batch.answers[:, 0]).float().mean()),
            "chance_accuracy": task.chance_accuracy}
    if cfg.task_min_accuracy and base["accuracy"] < cfg.task_min_accuracy:
        raise WorkbenchError(
            f"{lm.model_id} cannot do the {task.name} task: metric > 0 on {base['accuracy']:.0%} of {len(batch)} test "
            f"prompts (chance {task.chance_accuracy:.0%}, needed {cfg.task_min_accuracy:.0%}: --task-min-accuracy); "
            f"dictionaries and edits of a task the model does not do measure nothing")
    return base, logits


def _codes(sae, x: Tensor) -> Tensor:
    with torch.no_grad():
        return sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)).to_dense().float().cpu()


def _decode(sae, x: Tensor) -> Tensor:
    with torch.no_grad():
        return sae.decode(sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype))).float().cpu()


@torch.no_grad()
def supervised_eval(lm, saes: dict[str, Any] | None = None, cfg: SupervisedConfig | None = None,
                    progress: bool = False, on_site: Any = None) -> dict[str, Any]:
    """Baseline, then rows per (site, attribute[, SAE]); `saes` maps a name to an SAE (its hook: cfg.hook).

    `on_site(partial_result)` is called after each site (long runs save what they have).
    """
    cfg = cfg or SupervisedConfig(task="ioi")
    saes = saes or {}
    task = make_task(cfg.task or "ioi", lm)
    hooks = list(cfg.task_hooks) or sorted({s.cfg.hook for s in saes.values()})
    if not hooks:
        raise WorkbenchError("give hook points (--task-hooks) or an SAE whose hook point the task reads")
    lm.check_hooks(hooks)
    bad = [p for p in cfg.task_positions if p not in task.positions]
    if bad:
        raise WorkbenchError(f"unknown {task.name} position(s) {bad}; valid choices: {', '.join(task.positions)}")
    for name, s in saes.items():
        if s.d_in != lm.d_model:
            raise WorkbenchError(f"SAE {name} takes d_in={s.d_in}, but {lm.model_id} has d_model={lm.d_model}")
    t0 = time.time()
    test = task.prompts(cfg.task_test_prompts, "test", cfg.task_seed)
    base, clean_logits = task_baseline(lm, task, test, cfg)
    if progress:
        print(f"[{task.name}] {lm.model_id}: accuracy {base['accuracy']:.3f}, LD {base['ld_mean']:.3f} "
              f"on {len(test)} test prompts ({time.time() - t0:.0f}s)", flush=True)
    fit = task.prompts(cfg.task_fit_prompts, "train", cfg.task_seed)
    cfs = {a: task.counterfactual(test, a, cfg.task_seed) for a in task.attributes}
    positions = {p: None for p in cfg.task_positions}
    fit_acts = site_activations(lm, fit.tokens, hooks, {p: fit.positions[p] for p in positions}, cfg.task_batch)
    test_acts = site_activations(lm, test.tokens, hooks, {p: test.positions[p] for p in positions}, cfg.task_batch)
    cf_acts = {a: site_activations(lm, cf.tokens, hooks, {p: cf.positions[p] for p in positions}, cfg.task_batch)
               for a, cf in cfs.items()}
    clean_ld = task.metric(clean_logits, test)
    clean_pred = clean_logits.argmax(-1)
    rows: list[dict[str, Any]] = []
    for hook in hooks:
        site_saes = {n: s for n, s in saes.items() if s.cfg.hook == hook} if saes else {}
        for pos in cfg.task_positions:
            rows += _site_rows(lm, task, cfg, hook, pos, fit, test, fit_acts[(hook, pos)], test_acts[(hook, pos)],
                               cfs, {a: cf_acts[a][(hook, pos)] for a in cfs}, clean_ld, clean_pred, site_saes)
            if progress:
                print(f"[{task.name}] {hook} @ {pos} done ({time.time() - t0:.0f}s)", flush=True)
            if on_site is not None:
                on_site(_result(task, base, rows, cfg, t0))
    return _result(task, base, rows, cfg, t0)


def _result(task, base: dict[str, Any], rows: list[dict[str, Any]], cfg: SupervisedConfig, t0: float) -> dict[str, Any]:
    return {"task": task.describe(), "baseline": base, "rows": list(rows),
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
            "fit_split": "train", "test_split": "test", "seconds": time.time() - t0}


def _site_rows(lm, task, cfg: SupervisedConfig, hook: str, pos: str, fit: TaskBatch, test: TaskBatch, a_fit: Tensor,
               a: Tensor, cfs: dict[str, TaskBatch], a_cf: dict[str, Tensor], clean_ld: Tensor, clean_pred: Tensor,
               saes: dict[str, Any]) -> list[dict[str, Any]]:
    n = len(test)
    dics = {"mean": mean_dictionary(a_fit, fit.attributes), "mse": mse_dictionary(a_fit, fit.attributes)}
    mean = dics["mean"].mean.expand(n, -1)
    variants: dict[str, Tensor] = {"mean_ablated": mean}
    for k, d in dics.items():
        a_hat = d.reconstruct(test.attributes)
        variants[f"suff_{k}"] = a_hat
        variants[f"nec_{k}"] = mean + (a - a_hat)
    for attr, cf in cfs.items():
        variants[f"target_{attr}"] = a_cf[attr]
        variants[f"edit_{attr}"] = dics["mean"].edit(a, attr, test.attributes[attr], cf.attributes[attr])
    sae_info: dict[str, dict[str, Any]] = {}
    for name, sae in saes.items():
        x_hat = _decode(sae, a)
        variants[f"{name}|suff"] = x_hat
        variants[f"{name}|nec"] = mean + (a - x_hat)
        alpha = _codes(sae, a)
        dec = sae.W_dec.detach().float().cpu()
        info: dict[str, Any] = {"magnitude": {}}
        for attr in task.attributes:
            beta = _codes(sae, a_cf[attr])
            for k in cfg.task_ks:
                delta, chosen = greedy_edit(dec, alpha, beta, a_cf[attr] - a, k)
                variants[f"{name}|edit_{attr}_k{k}"] = a + delta
                info["magnitude"][(attr, k)] = float(sae_edit_magnitude(dec, alpha, beta, chosen).mean())
        active = _codes(sae, a_fit) > 0
        for attr in task.attributes:
            sc = attribute_f1(active, fit.attributes[attr], cfg.task_max_union)
            info[attr] = {"f1_features": int((sc.f1 >= cfg.task_f1).sum()),
                          "best_f1": float(sc.f1.max()) if sc.f1.numel() else 0.0,
                          "occluded_values": occluded_values(sc, fit.attributes[attr], cfg.task_f1),
                          "values": len(set(fit.attributes[attr])),
                          "split_features": split_features(active, fit.attributes[attr], cfg.task_f1)}
        sae_info[name] = info
    names = list(variants)
    stacked = torch.cat([variants[v] for v in names])
    logits = patched_logits(lm, test.tokens.repeat(len(names), 1), hook, test.positions[pos].repeat(len(names)),
                            stacked, cfg.task_batch)
    ld = {v: task.metric(logits[i * n:(i + 1) * n], test) for i, v in enumerate(names)}
    pred = {v: logits[i * n:(i + 1) * n].argmax(-1) for i, v in enumerate(names)}
    base = {"site": f"{hook}@{pos}", "hook": hook, "position": pos, "test_prompts": n, "fit_prompts": len(fit),
            "ld_clean": float(clean_ld.mean()), "ld_mean_ablated": float(ld["mean_ablated"].mean())}
    for k in dics:
        base[f"sufficiency_{k}"] = sufficiency(ld[f"suff_{k}"], clean_ld)
        base[f"necessity_{k}"] = necessity(ld[f"nec_{k}"], clean_ld, ld["mean_ablated"])
    rows = []
    for attr in task.attributes:
        target = pred[f"target_{attr}"]
        row = dict(base, attribute=attr,
                   target_changes=float((target != clean_pred).float().mean()),
                   edit_acc_none=edit_accuracy(clean_pred, target),
                   edit_acc_supervised=edit_accuracy(pred[f"edit_{attr}"], target),
                   edit_magnitude_supervised=float(dics["mean"].edit_magnitude(test.attributes, attr).mean()),
                   )
        if not saes:
            rows.append(row)
        for name, info in sae_info.items():
            r = dict(row, sae=name, sae_sufficiency=sufficiency(ld[f"{name}|suff"], clean_ld),
                     sae_necessity=necessity(ld[f"{name}|nec"], clean_ld, ld["mean_ablated"]),
                     sae_recon_error=_recon_error(ld[f"{name}|suff"], clean_ld, ld["mean_ablated"]))
            for k in cfg.task_ks:
                r[f"edit_acc_sae_k{k}"] = edit_accuracy(pred[f"{name}|edit_{attr}_k{k}"], target)
                r[f"edit_magnitude_sae_k{k}"] = info["magnitude"][(attr, k)]
            r.update(info[attr])
            rows.append(r)
    return rows


def _recon_error(ld_sae: Tensor, clean: Tensor, abl: Tensor) -> float:
    """ε = |LD_clean − LD_recon| / |LD_clean − LD_meanabl| (the paper wants <= 0.2)."""
    d = float(clean.mean() - abl.mean())
    return abs(float(clean.mean() - ld_sae.mean())) / abs(d) if d else math.nan


COLUMNS = (("site", "site", "{}"), ("attr", "attribute", "{}"), ("LD", "ld_clean", "{:.2f}"),
           ("LD abl", "ld_mean_ablated", "{:.2f}"), ("suff", "sufficiency_mean", "{:.2f}"),
           ("nec", "necessity_mean", "{:.2f}"), ("suff mse", "sufficiency_mse", "{:.2f}"),
           ("nec mse", "necessity_mse", "{:.2f}"), ("cf changes", "target_changes", "{:.2f}"), ("SAE suff", "sae_sufficiency", "{:.2f}"),
           ("SAE nec", "sae_necessity", "{:.2f}"), ("edit none", "edit_acc_none", "{:.2f}"),
           ("edit sup", "edit_acc_supervised", "{:.2f}"), ("SAE k2", "edit_acc_sae_k2", "{:.2f}"),
           ("SAE k4", "edit_acc_sae_k4", "{:.2f}"), ("SAE k6", "edit_acc_sae_k6", "{:.2f}"),
           ("mag sup", "edit_magnitude_supervised", "{:.2f}"), ("mag k6", "edit_magnitude_sae_k6", "{:.2f}"),
           ("F1>=.8", "f1_features", "{}"), ("occl", "occluded_values", "{}"), ("split", "split_features", "{}"))


def format_table(result: dict[str, Any]) -> str:
    """The baseline line, then the rows as a fixed-width table (one line per site, attribute[, SAE])."""
    b = result["baseline"]
    lines = [f"{result['task']['task']}: accuracy {b['accuracy']:.3f}, LD {b['ld_mean']:.3f} ± {b['ld_std']:.3f}, "
             f"top-1 {b['top1']:.3f} on {b['prompts']} test prompts (chance {b['chance_accuracy']:.2f})"]
    rows = result["rows"]
    cols = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    if any("sae" in r for r in rows):
        cols = [("SAE", "sae", "{}")] + cols
    cells = [[_cell(r.get(key), spec) for _, key, spec in cols] for r in rows]
    widths = [max([len(c[0])] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    lines.append("  ".join(c[0].rjust(w) for c, w in zip(cols, widths)))
    lines += ["  ".join(x.rjust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    try:
        return spec.format(v)
    except (ValueError, TypeError):
        return str(v)
