"""`sae steer` (base and steered text side by side), `sae steer-sweep` and `sae steer-consistency`."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from workbench.cli import add_verb
from workbench.config import add_config_args, config_from_args, load_config
from workbench.errors import WorkbenchError


def register(sub: argparse._SubParsersAction) -> None:
    """Add this package's verbs to the root `sae` command."""
    from steering.concepts import BUILTIN
    from steering.consistency import ConsistencyConfig
    from steering.interventions import UNITS
    from steering.selection.registry import selector_names
    from steering.sweep import METHODS, SweepConfig

    p = add_verb(sub, "steer", _steer, help="generate with and without steering; print both side by side",
                 description="Steer with SAE features (add a decoder direction, or clamp) or with a concept's "
                 "direction (DiffMean, PCA, DiffMean through the SAE) and print base and steered text side by side.")
    p.add_argument("--sae", required=True, help="SAE directory (its hook point is where the model is steered)")
    p.add_argument("--model", default="", help="model (default: the one the SAE was trained on)")
    p.add_argument("--prompt", nargs="+", required=True, help="one or more prompts")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--feature", type=int, nargs="+", help="SAE feature index(es)")
    what.add_argument("--concept", help=f"built-in concept ({', '.join(BUILTIN)}) or a .json file")
    p.add_argument("--method", choices=METHODS, default="sae", metavar="METHOD",
                   help="with --concept: which direction; sae = the concept's most contrastive feature "
                   f"(choices: {', '.join(METHODS)}; default: sae)")
    p.add_argument("--select", choices=selector_names(), default="rise", metavar="SELECTOR",
                   help="with --concept and --method sae: how the feature is picked; rise = largest activation rise "
                   "on the concept's texts (what it reads); output, concept_output, gradient = what it does to the "
                   "next token; sae_ts = a solved vector, not one feature "
                   f"(choices: {', '.join(selector_names())}; default: rise)")
    p.add_argument("--coeff", type=float, required=True, help="coefficient, in --unit")
    p.add_argument("--unit", choices=UNITS, default="mean_active", metavar="UNIT",
                   help="unit of --coeff: raw (coeff * W_dec[f]); max or mean_active (times the feature's max or "
                   "mean-when-active activation on neutral text); norm (times the hook's mean norm, unit direction). "
                   "DiffMean-type directions take raw or norm; a feature unit falls back to norm for them "
                   f"(choices: {', '.join(UNITS)}; default: mean_active)")
    p.add_argument("--clamp", action="store_true", help="clamp the feature(s) to coeff (in --unit) instead of adding")
    p.add_argument("--positions", default="all", help="all, prompt, generated, last, or a token range A:B (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="tokens to generate (default: 24)")
    p.add_argument("--sample", action="store_true", help="sample (seeded) instead of greedy decoding")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--device", default="cpu", help="device (default: cpu)")

    s = add_verb(sub, "steer-sweep", _sweep, help="coefficient sweep: SAE features vs DiffMean vs PCA, effect against cost",
                 description="For each concept and method, generate at every coefficient, judge concept presence, "
                 "fluency and KL cost with the unsteered model, choose the coefficient on half the prompts and "
                 "report the other half. Writes config.json, rows.jsonl, summary.json, table.md, plot.png.")
    s.add_argument("--config", help="rerun from a saved config.json (other flags are then ignored)")
    add_config_args(s, SweepConfig)
    _optional(s, "sae")

    c = add_verb(sub, "steer-consistency", _consistency,
                 help="consistency steering (LF-Steering): shift SAE features so paraphrased questions agree",
                 description="LF-Steering: label paraphrase pairs of each fact consistent when their answers name "
                 "the same entity, pick the layer a per-layer probe of that label prefers (among the --sae given), "
                 "contrast consistent against inconsistent pairs within each fact on the question span's SAE codes "
                 "(template features dropped), shift the chosen features where they fire, and report held-out "
                 "consistency with bootstrap intervals over facts beside a random-feature null and a DiffMean "
                 "vector, and locality.")
    c.add_argument("--config", help="rerun from a saved config.json (other flags are then ignored)")
    add_config_args(c, ConsistencyConfig)
    _optional(c, "sae")


def _optional(parser: argparse.ArgumentParser, dest: str) -> None:
    """--config makes every other flag optional; the required check moves to the handler."""
    for a in parser._actions:
        if a.dest == dest:
            a.required = False


def _steer(args: argparse.Namespace) -> int:
    from steering.concepts import load_concept, neutral_texts
    from steering.generation import generate
    from steering.interventions import add_direction, add_feature, check_feature, clamp_features
    from steering.positions import Positions
    from saes import load_sae
    from steering.setup import load_model_for
    from steering.stats import measure_stats
    from steering.sweep import SweepConfig, concept_directions, method_name

    positions = Positions.parse(args.positions)
    if any(not p.strip() for p in args.prompt):
        raise WorkbenchError("a prompt is empty; every prompt needs some text")
    concept = load_concept(args.concept) if args.concept else None
    sae = load_sae(args.sae, device=args.device)
    for f in args.feature or []:
        check_feature(sae, f)  # before the model loads: bad input fails fast
    lm = load_model_for(sae, args.model, args.device)
    hook = sae.cfg.hook
    stats = measure_stats(lm, neutral_texts(8), hook, sae)
    if concept is not None:
        cfg = SweepConfig(sae=args.sae, methods=(args.method,), concepts=(args.concept,), select=(args.select,),
                          positions=args.positions)
        dirs, judge, found = concept_directions(lm, sae, concept, cfg, stats.mean_norm)
        print(f"concept {concept.name!r}: most contrastive SAE feature {found['feature']}")
        sel = found["selected"].get(method_name(args.select), {})
        if args.method == "sae" and sel:
            print(f"selected by {args.select}: " + (f"feature {sel['feature']}" if sel["feature"] is not None
                                                    else "a solved vector") + f" (score {sel['score']:.3g})")
        if args.method == "sae" and sel.get("feature") is not None:
            features = [sel["feature"]]
        elif args.method == "sae":
            unit = args.unit if args.unit in ("raw", "norm") else "norm"
            iv = add_direction(hook, dirs[method_name(args.select)], args.coeff, unit=unit, stats=stats,
                               positions=positions, label=args.select)
            ivs, what = [iv], f"{args.select} vector x {args.coeff:g} ({unit})"
            features = []
        else:
            unit = args.unit if args.unit in ("raw", "norm") else "norm"
            iv = add_direction(hook, dirs[args.method], args.coeff, unit=unit, stats=stats, positions=positions,
                               label=args.method)
            ivs, what = [iv], f"{args.method} direction x {args.coeff:g} ({unit})"
            features = []
    else:
        features = list(args.feature)
    if features:
        if args.clamp:
            unit = args.unit
            iv = clamp_features(sae, {f: args.coeff for f in features}, unit=unit, stats=stats, positions=positions)
            ivs = [iv]
            what = "clamp " + ", ".join(f"feature {e.feature} to {e.value:.3g}" for e in iv.edits)
            what += f" ({args.coeff:g} x {unit})"
        else:
            ivs = [add_feature(sae, f, args.coeff, unit=args.unit, stats=stats, positions=positions) for f in features]
            what = "add " + ", ".join(f"feature {iv.label.split()[-1]} x {iv.coeff:.3g}" for iv in ivs)
            what += f" ({args.coeff:g} x {args.unit})"
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, seed=args.seed)
    base, steered = generate(lm, args.prompt, [], **kw), generate(lm, args.prompt, ivs, **kw)
    print(f"{lm.model_id} at {hook} (mean norm {stats.mean_norm:.3g}): {what}, positions {args.positions}")
    for prompt, a, b, n, k in zip(args.prompt, base.texts, steered.texts, steered.read_positions,
                                  steered.steered_positions):
        print(side_by_side(prompt, a, b))
        print(f"  steered positions: {', '.join(map(str, k))} of {n} read (prompt + generated tokens the model read)")
    return 0


def side_by_side(prompt: str, base: str, steered: str, width: int = 44) -> str:
    left = textwrap.wrap(base.replace("\n", " ") or "(nothing)", width)
    right = textwrap.wrap(steered.replace("\n", " ") or "(nothing)", width)
    n = max(len(left), len(right))
    left += [""] * (n - len(left))
    right += [""] * (n - len(right))
    lines = [f"prompt: {prompt!r}", f"  {'base':<{width}} | steered", f"  {'-' * width} | {'-' * width}"]
    lines += [f"  {a:<{width}} | {b}" for a, b in zip(left, right)]
    return "\n".join(lines)


def _load(cls: type, args: argparse.Namespace):
    if args.config:
        if not Path(args.config).is_file():
            raise WorkbenchError(f"config file {args.config!r} does not exist")
        try:
            return load_config(cls, args.config)
        except json.JSONDecodeError as e:
            raise WorkbenchError(f"{args.config} is not valid JSON: {e}") from None
    if not args.sae:
        raise WorkbenchError("give --sae DIR (or --config a saved config.json)")
    return config_from_args(cls, args)


def _sweep(args: argparse.Namespace) -> int:
    from steering.sweep import SweepConfig, format_notes, format_table, run_sweep

    cfg = _load(SweepConfig, args)
    summary = run_sweep(cfg)
    for name, c in summary["concepts"].items():
        ex = c["examples"]
        base = next((e for e in ex if e["method"] == "none"), None)
        for e in ex:
            if base is not None and e["method"] != "none":
                print(f"[{name}] {e['method']} at its chosen coefficient {e['coeff']:g}:")
                print(side_by_side(e["prompt"], base["text"], e["text"]))
    print(format_table(summary))
    print(format_notes(summary))
    print(f"wrote {cfg.out}/config.json, rows.jsonl, summary.json, table.md, plot.png")
    return 0


def _consistency(args: argparse.Namespace) -> int:
    from steering.consistency import ConsistencyConfig, format_summary, run_consistency

    cfg = _load(ConsistencyConfig, args)
    print(format_summary(run_consistency(cfg)))
    print(f"wrote {cfg.out}/config.json, rows.jsonl, summary.json, plot.png")
    return 0
