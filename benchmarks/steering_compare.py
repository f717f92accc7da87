"""Does an SAE feature steer as well as DiffMean? Every method at one KL budget, judged on held-out prompts.

For each SAE (one per layer: trained here on one harvested cache, or given with --sae) and each
concept, every method gives one direction at the SAE's hook, added at every position as
`coeff x (hook mean norm) x unit(direction)`:
- SAE features picked by each selector of steering.selection (rise, output, concept_output,
  gradient, sae_ts), *added* (not clamped) along their decoder rows (sae_ts: its solved vector);
- controls: 10 random features (their median is the control), DiffMean, PCA of paired
  differences, DiffMean through the SAE.
The coefficient is chosen on the *selection* prompts, never on the reported ones: among the grid,
the one with the largest steered log-probability of the concept's target tokens at each
selection prompt's last token (the quantity the gradient score differentiates; forward passes
only) whose KL on neutral text (nats/token, every position steered) is within the budget
(0.25 and 0.1; 0 is always admitted). The grid is walked upward per method and a method stops
after the first coefficient whose KL is over the largest budget (walk_grid: the same choice as the
full grid unless the KL falls back under the budget at a larger coefficient; choice.json lists
the skipped points). At that coefficient every method generates from the
held-out prompts (greedy and seeded samples, the unsteered model with the same seeds beside
it), and the unsteered model judges the text (steering.measures): target-word hit rate and
target log-prob, perplexity, distinct-2 and zlib compression ratio. Gains are steered minus
unsteered per prompt (decodes averaged), with percentile-bootstrap 95% intervals over prompts
(evals.intervals). Spearman: 16 random members of the candidate pool (rise and logit-lens
candidates) are steered too (greedy, 0.25 budget), and each selection score of theirs is
ranked against their measured log-prob gain.

Every stage is cached under --out per (layer, concept, method) as JSON (vectors in directions.pt
with the prompts and positions they came from; every generation with its steered positions), so
a rerun continues where it stopped. The end writes the markdown table and the goal check to
--table (default OUT/table.md).

    python benchmarks/steering_compare.py --out cache/steer/compare           # full: 3 layers, 6 concepts
    python benchmarks/steering_compare.py --quick --out /tmp/steer_quick      # a minutes-long check
    python benchmarks/steering_compare.py --layers --sae qs8=cache/quickstart/saes \
        --sae wiki1m8=cache/saes/wiki-1m-topk --out cache/steer/sae_size       # existing SAEs only
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from steering.concepts import BUILTIN, MORE_STEER_PROMPTS, STEER_PROMPTS, load_concept, neutral_texts
from steering.generation import Generation, generate
from steering.interventions import AddVector
from steering.measures import Judge, NeutralKL, score_generation
from steering.positions import Positions
from steering.selection.gradient import gradient_scores, steered_target_logprobs, target_objective
from steering.selection.output import output_scores
from steering.selection.registry import SelectionContext, select_direction
from steering.stats import measure_stats
from steering.vectors import diffmean, diffmean_sae, feature_contrast, pca_diff, read_concept
from workbench.io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steering_compare_table import MEASURES, goal_check, goal_summary, ratio_interval, same_hook_rows, summarise, write_table  # noqa: E402,F401 (the table half)

log = logging.getLogger("steering_compare")
SELECTORS = ("rise", "output", "concept_output", "gradient", "sae_ts")
ALL_PROMPTS = STEER_PROMPTS + MORE_STEER_PROMPTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="cache/steer/compare", help="run directory (reruns continue in it)")
    p.add_argument("--table", default="", help="markdown table and goal check (default OUT/table.md)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="wiki-vital")
    p.add_argument("--layers", nargs="*", type=int, default=[4, 12, 20],
                   help="blocks whose resid_post gets an SAE trained here on one harvested cache")
    p.add_argument("--cache", default="", help="an existing activation cache with those hooks (else harvested to OUT/acts)")
    p.add_argument("--tokens", type=int, default=300_000, help="tokens harvested for the layer SAEs")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--sae", nargs="*", default=[], metavar="LABEL=DIR", help="also run these existing SAEs")
    p.add_argument("--concepts", nargs="+", default=list(BUILTIN))
    p.add_argument("--select-prompts", type=int, default=24, help="prompts the coefficient is chosen on")
    p.add_argument("--report-prompts", type=int, default=24, help="held-out prompts reported")
    p.add_argument("--samples", type=int, default=2, help="seeded samples per prompt besides greedy")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--coeffs", nargs="+", type=float, default=[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4],
                   help="coefficient grid, in units of the hook's mean norm (0 is always a candidate)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.25, 0.1], help="KL budgets, nats/token; the first is the goal's")
    p.add_argument("--selectors", nargs="+", default=list(SELECTORS), choices=SELECTORS)
    p.add_argument("--random", type=int, default=10, help="random features per concept (their median is the control)")
    p.add_argument("--spearman", type=int, default=16, help="pool candidates steered for the score-vs-gain correlation")
    p.add_argument("--candidates", type=int, default=32, help="pool size per source (rise, logit lens)")
    p.add_argument("--sae-ts-prompts", type=int, default=8, help="selection prompts SAE-TS measures effects on")
    p.add_argument("--neutral", type=int, default=8, help="neutral texts for the KL cost")
    p.add_argument("--neutral-tokens", type=int, default=64)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="a small check: 2 concepts, 4+4 prompts, greedy, 3 random")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine two threads made a 32-row, "
                        "10-token generation 13x and a 8x65-token forward 4-5x slower than one, each op "
                        "waiting for a descheduled thread; 0 keeps torch's default)")
    p.add_argument("--table-only", action="store_true",
                   help="write the table from the finished (layer, concept) summaries in --out; loads no model")
    a = p.parse_args(argv)
    if a.quick:
        a.concepts = a.concepts[:2] if a.concepts != list(BUILTIN) else ["ocean", "food"]
        a.select_prompts, a.report_prompts, a.samples, a.random, a.spearman = 4, 4, 0, 3, 6
        a.coeffs, a.neutral, a.neutral_tokens, a.candidates, a.sae_ts_prompts = [0.1, 0.2, 0.4], 2, 32, 8, 2
        a.resamples = 200
    if a.select_prompts + a.report_prompts > len(ALL_PROMPTS):
        p.error(f"--select-prompts + --report-prompts must be at most {len(ALL_PROMPTS)}")
    return a


# ---------------------------------------------------------------- SAEs: one cache, one SAE per layer

def sh(cmd: list[str]) -> None:
    log.info("$ %s", " ".join(shlex.quote(c) for c in cmd))
    subprocess.run(cmd, check=True)


def layer_saes(a: argparse.Namespace, out: Path) -> dict[str, str]:
    """label -> SAE directory: the --sae ones, and one trained per --layers block (harvest and train
    are skipped when already done; `sae harvest` resumes an interrupted cache)."""
    runs = dict(s.split("=", 1) for s in a.sae)
    if not a.layers:
        return runs
    hooks = [f"blocks.{n}.hook_resid_post" for n in a.layers]
    sae_bin = str(Path(sys.executable).parent / "sae")
    cache = a.cache or str(out / "acts")
    if not a.cache and not (Path(cache) / "manifest.json").is_file():
        sh([sae_bin, "harvest", "--model", a.model, "--corpus", a.corpus, "--hooks", *hooks,
            "--tokens", str(a.tokens), "--out", cache])
    for n, hook in zip(a.layers, hooks):
        d = out / "saes" / hook
        if not (d / "summary.json").is_file():
            sh([sae_bin, "train", "--cache", cache, "--hooks", hook, "--arch", "topk", "--k", str(a.k),
                "--expansion", str(a.expansion), "--batch-size", "2048", "--epochs", str(a.epochs),
                "--out", str(d)])
        runs[f"L{n}"] = str(d)
    return runs


# ---------------------------------------------------------------- cached stages

def sae_train_tokens(sae_dir: str) -> int:
    """Tokens the SAE trained on, from its cfg.json (0 when the directory or the record is gone)."""
    from saes import read_sae_cfg
    from workbench.errors import WorkbenchError

    try:
        return int(read_sae_cfg(sae_dir).get("train", {}).get("tokens", 0))
    except (WorkbenchError, OSError, AttributeError, TypeError, ValueError):  # moved or foreign: no count
        return 0


def load_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def decodes(a: argparse.Namespace) -> list[dict]:
    return [{"do_sample": False, "seed": 0}] + [{"do_sample": True, "seed": s + 1} for s in range(a.samples)]


def gen_rows(lm: Any, prompts: list[str], vecs: torch.Tensor | None, hook: str, a: argparse.Namespace,
             greedy_only: bool = False) -> list[list[Generation]]:
    """Per vector (or once unsteered when `vecs` is None), one Generation per decode, all vectors in one
    batch per decode (each row its own vector)."""
    n = len(prompts)
    m = 1 if vecs is None else vecs.shape[0]
    out: list[list[Generation]] = [[] for _ in range(m)]
    for d in decodes(a)[: 1 if greedy_only else None]:
        ivs = [] if vecs is None else [AddVector(hook, vecs.repeat_interleave(n, 0).unsqueeze(1), 1.0,
                                                 Positions("all"), label="compare")]
        g = generate(lm, prompts * m, ivs, max_new_tokens=a.max_new_tokens, batch_size=n * m, **d)
        for j in range(m):
            sl = slice(j * n, (j + 1) * n)
            out[j].append(Generation(g.prompts[sl], g.prompt_ids[sl], g.new_ids[sl], g.texts[sl],
                                     g.read_positions[sl], g.steered_positions[sl], g.interventions))
    return out


def judged(lm: Any, gens: list[Generation], judge: Judge) -> list[dict]:
    """One row per (decode, prompt): the measures, the text and the positions read and steered."""
    return judged_many(lm, [gens], judge)[0]


def judged_many(lm: Any, settings: list[list[Generation]], judge: Judge) -> list[list[dict]]:
    """judged() for several settings at once: every (setting, decode) of a prompt is judged in one
    score_generation call, so the unsteered model reads each prompt once for all of them."""
    flat = [g for gens in settings for g in gens]
    merged = Generation([p for g in flat for p in g.prompts], [x for g in flat for x in g.prompt_ids],
                        [x for g in flat for x in g.new_ids], [x for g in flat for x in g.texts])
    scores = score_generation(lm, merged, judge, batch_size=64)
    out, at = [], 0
    for gens in settings:
        rows = []
        for d, g in enumerate(gens):
            for i in range(len(g.prompts)):
                s = scores[at]
                at += 1
                rows.append({"decode": d, "prompt": i, **{k: s[k] for k in MEASURES}, "text": g.texts[i],
                             "read_positions": g.read_positions[i],
                             "steered_positions": g.steered_positions[i][0] if g.steered_positions[i] else 0})
        out.append(rows)
    return out


class Run:
    """One SAE (one layer): its directions, coefficient choice and held-out generations per concept."""

    def __init__(self, label: str, sae_dir: str, lm: Any, a: argparse.Namespace, out: Path,
                 sel_prompts: list[str], rep_prompts: list[str], neutral: list[str], kl: NeutralKL) -> None:
        from saes import load_sae
        from steering.setup import check_fit

        self.label, self.a, self.lm = label, a, lm
        self.sae = load_sae(sae_dir, device=a.device).eval()
        check_fit(lm, self.sae)
        self.sae_dir, self.hook = sae_dir, self.sae.cfg.hook
        self.dir = out / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sel_prompts, self.rep_prompts, self.kl = sel_prompts, rep_prompts, kl
        stats_path = self.dir / "stats.json"
        if not stats_path.is_file():
            atomic_write_json(stats_path, {"mean_norm": measure_stats(lm, neutral, self.hook, None).mean_norm})
        self.mean_norm = load_json(stats_path)["mean_norm"]

    # -- directions, with where they came from
    def directions(self, concept: Any) -> tuple[dict[str, torch.Tensor], dict]:
        cdir = self.dir / concept.name
        cdir.mkdir(exist_ok=True)
        path = cdir / "directions.pt"
        if path.is_file():
            d = torch.load(path)
            return d["vectors"], d["info"]
        a, lm, sae = self.a, self.lm, self.sae
        pos, neg, source = read_concept(lm, concept.positive, concept.negative, self.hook, read="mean")
        judge = Judge(self.hook, target_words=tuple(concept.target_words))
        targets = judge.target_ids(lm)
        ctx = SelectionContext(lm, sae, pos, neg, targets, self.sel_prompts, Positions("all"), a.candidates,
                               self.mean_norm)
        vecs: dict[str, torch.Tensor] = {}
        info: dict[str, Any] = {"source": source.to_dict(), "targets": targets, "selected": {},
                                "selection_prompts": self.sel_prompts}
        for name in a.selectors:
            t = time.time()
            if name == "sae_ts":  # effects measured by generation: on a few selection prompts
                ctx_ts = SelectionContext(lm, sae, pos, neg, targets, self.sel_prompts[: a.sae_ts_prompts],
                                          Positions("all"), a.candidates, self.mean_norm, ctx._pool)
                sel = select_direction(name, ctx_ts)
            else:
                sel = select_direction(name, ctx)
            vecs[f"sae_{name}"] = sel.vector.float().clone()
            info["selected"][f"sae_{name}"] = {**sel.describe(), "seconds": time.time() - t}
        vecs["diffmean"] = diffmean(pos, neg)
        n = min(len(pos), len(neg))
        vecs["pca"] = pca_diff(pos[:n], neg[:n])
        vecs["diffmean_sae"] = diffmean_sae(sae, pos, neg).float()
        g = torch.Generator().manual_seed(1234 + sum(map(ord, concept.name)))
        rand = torch.randperm(sae.num_features, generator=g)[: a.random].tolist()
        for f in rand:
            vecs[f"random_{f}"] = sae.W_dec[f].detach().float().cpu().clone()
        # the Spearman set: random members of the candidate pool, with every score of theirs
        pool = ctx.pool()
        pick = pool[torch.randperm(len(pool), generator=g)[: a.spearman]]
        os_ = output_scores(lm, sae, pick, targets=targets)
        grad = gradient_scores(lm, sae, self.sel_prompts, targets, Positions("all"))
        rise = feature_contrast(sae, pos, neg)
        info["spearman_set"] = [{"feature": int(f), "rise": float(rise[f]), "output": float(os_.output[i]),
                                 "concept_output": float(os_.target_prob[i]), "gradient": float(grad[f])}
                                for i, f in enumerate(pick.tolist())]
        for f in pick.tolist():
            vecs[f"cand_{f}"] = sae.W_dec[f].detach().float().cpu().clone()
        info["pool"] = pool.tolist()
        torch.save({"vectors": vecs, "info": info}, path)
        return vecs, info

    # -- coefficient choice on the selection prompts
    def choose(self, concept: Any, vecs: dict[str, torch.Tensor], targets: list[int]) -> dict[str, dict]:
        path = self.dir / concept.name / "choice.json"
        done = load_json(path) or {}
        todo = [m for m in vecs if m not in done]
        if todo:
            t = time.time()
            unit = {m: vecs[m] / vecs[m].norm().clamp_min(1e-12) for m in todo}
            cost = {"kl": 0.0, "objective": 0.0}

            def measure(methods: list[str], c: float, stop_kl: float) -> tuple[list[float], list[float | None]]:
                t0 = time.time()
                pushes = torch.stack([c * self.mean_norm * unit[m] for m in methods])  # [M, d]
                kls = self.kl.many(self.hook, pushes, Positions("all"), rows_per_pass=32)
                t1 = time.time()
                ok = [i for i, k in enumerate(kls) if k <= stop_kl]  # over every budget: never chosen, not scored
                objs: list[float | None] = [None] * len(methods)
                if ok:
                    got = steered_target_logprobs(self.lm, self.hook, self.sel_prompts, targets, pushes[ok])
                    for i, o in zip(ok, got.mean(1).tolist()):
                        objs[i] = o
                cost["kl"] += t1 - t0
                cost["objective"] += time.time() - t1
                return kls, objs

            with torch.no_grad():
                base = float(target_objective(self.lm, self.sel_prompts, targets))
            done.update(walk_grid(todo, self.a.coeffs, measure, self.a.budgets, base))
            atomic_write_json(path, done)
            log.info("  %s %s: coefficients of %d methods chosen in %.0f s (KL %.0f s, objective %.0f s; %d of %d "
                     "grid points past the budget skipped)", self.label, concept.name, len(todo), time.time() - t,
                     cost["kl"], cost["objective"], sum(len(done[m]["skipped"]) for m in todo),
                     len(todo) * len([c for c in self.a.coeffs if c != 0]))
        return done

    # -- held-out generations at the chosen coefficients
    def report(self, concept: Any, vecs: dict[str, torch.Tensor], choice: dict[str, dict], judge: Judge) -> dict:
        path = self.dir / concept.name / "report.json"
        done = load_json(path) or {}
        settings = []  # (key, method, coeff, greedy_only)
        for m in vecs:
            budgets = self.a.budgets[:1] if m.startswith("cand_") else self.a.budgets
            for b in budgets:
                c = choice[m]["chosen"][str(b)]
                key = f"{m}@{c:g}"
                if c != 0 and key not in done and key not in [s[0] for s in settings]:
                    settings.append((key, m, c, m.startswith("cand_")))
        for greedy_only in (False, True):
            group = [s for s in settings if s[3] == greedy_only]
            for part in range(0, len(group), 12):  # 12 settings x prompts per batch
                chunk = group[part: part + 12]
                pushes = torch.stack([c * self.mean_norm * vecs[m] / vecs[m].norm().clamp_min(1e-12)
                                      for _, m, c, _ in chunk])
                t = time.time()
                gens = gen_rows(self.lm, self.rep_prompts, pushes, self.hook, self.a, greedy_only)
                for (key, m, c, _), rows in zip(chunk, judged_many(self.lm, gens, judge)):
                    done[key] = {"method": m, "coeff": c, "rows": rows}
                atomic_write_json(path, done)
                log.info("  %s %s: %d settings generated in %.0f s", self.label, concept.name, len(chunk),
                         time.time() - t)
        return done


def pick_coeff(grid: list[dict], budget: float) -> float:
    """The coefficient with the largest objective among those whose KL is within the budget (NaN KL is
    never within it; coefficient 0, KL 0, always is); the smaller coefficient on a tie."""
    ok = [r for r in grid if r["kl"] <= budget]
    return max(sorted(ok, key=lambda r: r["coeff"]), key=lambda r: r["objective"])["coeff"]


def walk_grid(methods: list[str], coeffs: list[float], measure: Any, budgets: list[float],
              base_objective: float) -> dict[str, dict]:
    """Each method's grid and chosen coefficient per budget, walking the coefficients upward.

    `measure(methods, coeff, stop_kl)` gives the KL of each method at `coeff` and its objective (None
    where the KL is over `stop_kl`). A method leaves the walk after the first coefficient whose KL
    is over the largest budget (or NaN): the coefficients above it are not measured and are listed
    under `skipped`; the one over the budget stays in the grid (KL measured, objective None). This is
    a choice, not a pure speed-up: it picks what the full grid would pick unless the KL falls back
    under the budget at a larger coefficient (KL not monotone in the coefficient), which the full
    grid could then choose and the walk cannot. Coefficient 0 (KL 0, `base_objective`) is always in
    the grid, as before."""
    grid_c = sorted(c for c in set(coeffs) if c != 0)
    stop_kl = max(budgets)
    out = {m: {"grid": [{"coeff": 0.0, "kl": 0.0, "objective": base_objective}], "skipped": []} for m in methods}
    alive = list(methods)
    for j, c in enumerate(grid_c):
        if not alive:
            break
        kls, objs = measure(alive, c, stop_kl)
        still = []
        for m, kl, obj in zip(alive, kls, objs):
            out[m]["grid"].append({"coeff": c, "kl": kl, "objective": obj})
            if kl <= stop_kl:
                still.append(m)
            else:
                out[m]["skipped"] = grid_c[j + 1:]
        alive = still
    for m in methods:
        out[m]["chosen"] = {str(b): pick_coeff(out[m]["grid"], b) for b in budgets}
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = Path(a.table or out / "table.md")
    if a.table_only:
        metas = {p.parent.name: load_json(p) for p in sorted(out.glob("*/meta.json"))}
        for m in metas.values():  # meta.json written before train_tokens was recorded
            m.setdefault("train_tokens", sae_train_tokens(m["sae_dir"]))
        summ = {label: {c: s for c in a.concepts if (s := load_json(out / label / c / "summary.json"))}
                for label in metas}
        print(write_table(a, metas, summ, table, 0.0))
        return 0
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    atomic_write_json(out / "args.json", vars(a))
    saes = layer_saes(a, out)
    if not saes:
        raise SystemExit("nothing to run: give --layers or --sae")
    from workbench.models import load_model

    lm = load_model(a.model, device=a.device)
    sel_prompts = ALL_PROMPTS[: a.select_prompts]
    rep_prompts = ALL_PROMPTS[a.select_prompts: a.select_prompts + a.report_prompts]
    concepts = [load_concept(c) for c in a.concepts]
    neutral = neutral_texts(a.neutral, exclude=[t for c in concepts for t in c.texts])
    kl = NeutralKL(lm, neutral, max_tokens=a.neutral_tokens)
    base_path = out / "unsteered.json"
    base = load_json(base_path)
    if base is None:
        gens = gen_rows(lm, rep_prompts, None, "", a)[0]
        base = {"gens": [{"prompts": g.prompts, "prompt_ids": g.prompt_ids, "new_ids": g.new_ids, "texts": g.texts,
                          "read_positions": g.read_positions, "steered_positions": g.steered_positions}
                         for g in gens]}
        atomic_write_json(base_path, base)
    base_gens = [Generation(**g) for g in base["gens"]]
    runs: dict[str, Run] = {}
    summ: dict[str, dict[str, dict]] = {}
    for label, sae_dir in saes.items():
        run = Run(label, sae_dir, lm, a, out, sel_prompts, rep_prompts, neutral, kl)
        runs[label] = {"sae_dir": sae_dir, "hook": run.hook, "features": run.sae.num_features,
                       "train_tokens": int(run.sae.cfg.train.get("tokens", 0)), "mean_norm": run.mean_norm}
        atomic_write_json(run.dir / "meta.json", runs[label])
        summ[label] = {}
        for concept in concepts:
            t = time.time()
            vecs, info = run.directions(concept)
            judge = Judge(run.hook, target_words=tuple(concept.target_words))
            bpath = run.dir / concept.name / "unsteered_rows.json"
            base_rows = load_json(bpath)
            if base_rows is None:
                base_rows = judged(lm, base_gens, judge)
                atomic_write_json(bpath, base_rows)
            choice = run.choose(concept, vecs, info["targets"])
            report = run.report(concept, vecs, choice, judge)
            summ[label][concept.name] = summarise(a, run, concept, base_rows, choice, report, info)
            atomic_write_json(run.dir / concept.name / "summary.json", summ[label][concept.name])
            log.info("%s %s done in %.0f s", label, concept.name, time.time() - t)
            write_table(a, runs, summ, table, time.time() - start)  # after every concept: a cut run keeps a table
    atomic_write_json(out / "summary.json", summ)
    text = write_table(a, runs, summ, table, time.time() - start)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
