"""`sae eval --sae DIR --task ioi`: the supervised evaluation of each SAE, written into its eval.json.

    sae eval --sae cache/quickstart/saes --task ioi                      # model: the SAE's own
    sae eval --sae DIR --task ioi --task-hooks blocks.4.hook_resid_post  # sites other than the SAE's hook

No cache is read: the task makes its own prompts. The model defaults to the one the SAE names
(the offline alias when its id is an offline default's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evals.loading import expand_sae_paths, load_for_eval
from evals.result import EvalResult
from evals.supervised.run import SupervisedConfig, format_table, supervised_eval
from workbench.config import config_from_args
from workbench.device import resolve_device
from evals.tasks import TASKS
from workbench.errors import WorkbenchError, choices_error
from workbench.models import OFFLINE_MODELS, load_model


def model_for(sae_model_id: str | None, given: str) -> str:
    """--model if given, else the SAE's model (its offline alias when there is one)."""
    if given and given != "none":
        return given
    if not sae_model_id:
        raise WorkbenchError("--model is required: the SAE does not name the model it was trained on")
    for alias, (_, _, model_id) in OFFLINE_MODELS.items():
        if model_id == sae_model_id:
            return alias
    return sae_model_id


def run_task_eval(args: argparse.Namespace, eval_cfg) -> int:
    tcfg = config_from_args(SupervisedConfig, args)
    if tcfg.task not in TASKS:  # before anything loads
        raise choices_error("task", tcfg.task, tuple(TASKS))
    device = resolve_device(eval_cfg.device)
    refs = expand_sae_paths(args.sae)
    loaded = [(ref, load_for_eval(ref.dir, device=device, norm_scaling_factor=args.norm_scaling_factor)) for ref in refs]
    lms: dict[str, object] = {}
    for ref, sae in loaded:
        name = model_for(getattr(sae.cfg, "model_id", None), eval_cfg.model)
        if name not in lms:
            lms[name] = load_model(name, device=device)
        lm = lms[name]
        out = supervised_eval(lm, {ref.name: sae}, tcfg, progress=eval_cfg.progress)
        r = EvalResult(sae={"name": ref.name, "dir": str(ref.dir), "architecture": sae.architecture,
                            "hook": sae.cfg.hook, "model_id": lm.model_id, "num_features": sae.num_features,
                            "k": getattr(sae.cfg, "k", None)}, task=out)
        target = Path(args.out or "cache/evals") / ref.name if (args.out or ref.hub) else ref.dir
        path = r.save(target)
        print(format_table(out), flush=True)
        print(f"eval.json: {path}", flush=True)
    return 0
