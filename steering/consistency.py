"""Consistency steering (LF-Steering, arXiv 2501.11036): make paraphrases of a question agree.

Facts the offline model knows (country -> capital), each asked in eight paraphrases (TEMPLATES). The method, as the paper describes it:

0. Facts. Of the candidates (CANDIDATES), those the model knows: its answer under the first
   template names the capital. They are split (seeded) into training and held-out facts.
1. Labels. Each answer is scored on its answer *entity* (the first known capital named in the
   continuation, else its first capitalised phrase), not its first word. A paraphrase pair of one
   fact is *consistent* when both answers name the same entity: the label is agreement within a
   fact, not correctness.
2. Layer. A per-layer probe (logistic regression on |h_i - h_j| of the pair's read activations,
   cross-validated with whole facts held out) predicts the pair label; the layer it separates
   best among those with an SAE is steered (every probed layer's score is reported).
3. Reading. Activations are read where all paraphrases share meaning: the mean over the question
   span (every prompt token but BOS), of the SAE codes of each token.
4. Contrast. Within each fact with both kinds of pairs, mean code over consistent pairs minus
   mean code over inconsistent pairs (a pair's code: the mean of its two prompts'); averaged over
   facts, and ranked by its t statistic over facts. Features that mostly encode the template
   (template eta^2 above `max_template_eta2` over all training prompts) and features that rarely
   fire are dropped before ranking.
5. Steering. The chosen features get a bias alpha (in units of each feature's mean activation
   when firing), signed by the contrast, on the question span, only where they fire; a code is
   never pushed below zero. alpha is chosen on the training facts.

Reported on held-out facts, with percentile-bootstrap intervals over facts: consistency (mean over
facts of the share of agreeing pairs) and accuracy before and after; beside it every time, the
same shifts given to random eligible feature sets (the null), and a DiffMean-of-consistency vector
(the same within-fact contrast of the raw activations), its coefficient chosen on the same
training facts; and locality (KL on neutral text with the shift at every token, share of
unrelated prompts whose greedy continuation changes).

One deviation, said plainly: the paper trains a TopK SAE at the probe's layer; here the layer is
chosen among the SAEs given (`--sae` takes several), and the report says which layer the probe
prefers overall.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steering.concepts import STEER_PROMPTS, neutral_texts
from steering.generation import generate
from steering.interventions import Intervention, add_direction, code_edit_delta
from steering.measures import NeutralKL
from steering.positions import Positions
from steering.reading import _device, chunks, encode_texts
from workbench.config import save_config
from workbench.errors import WorkbenchError
from workbench.hooks import HookSite, capture
from workbench.io import atomic_save_figure, atomic_write_bytes, atomic_write_json

TEMPLATES = [
    "The capital of {x} is",
    "{x}'s capital city is",
    "The capital city of {x} is",
    "Q: What is the capital of {x}?\nA: The capital of {x} is",
    "Question: Which city is the capital of {x}? Answer:",
    "If you travel to the capital of {x}, you arrive in",
    "The government of {x} sits in its capital,",
    "Everyone knows that the capital of {x} is the city of",
]
log = logging.getLogger(__name__)
# Country -> capital candidates. A run keeps the facts the model knows (`known_facts`: its answer
# under the first template names the capital) and splits those into training and held-out facts.
CANDIDATES = [('France', 'Paris'), ('Germany', 'Berlin'), ('Italy', 'Rome'), ('Japan', 'Tokyo'), ('Spain', 'Madrid'),
              ('England', 'London'), ('Russia', 'Moscow'), ('China', 'Beijing'), ('Egypt', 'Cairo'),
              ('Greece', 'Athens'), ('Canada', 'Ottawa'), ('Ireland', 'Dublin'), ('Portugal', 'Lisbon'),
              ('Austria', 'Vienna'), ('Hungary', 'Budapest'), ('Poland', 'Warsaw'), ('Sweden', 'Stockholm'),
              ('Norway', 'Oslo'), ('Finland', 'Helsinki'), ('Denmark', 'Copenhagen'), ('Netherlands', 'Amsterdam'),
              ('Belgium', 'Brussels'), ('Switzerland', 'Bern'), ('Czech Republic', 'Prague'),
              ('Romania', 'Bucharest'), ('Bulgaria', 'Sofia'), ('Serbia', 'Belgrade'), ('Croatia', 'Zagreb'),
              ('Ukraine', 'Kyiv'), ('Turkey', 'Ankara'), ('Iran', 'Tehran'), ('Iraq', 'Baghdad'),
              ('Syria', 'Damascus'), ('Lebanon', 'Beirut'), ('Israel', 'Jerusalem'), ('Jordan', 'Amman'),
              ('Saudi Arabia', 'Riyadh'), ('India', 'New Delhi'), ('Pakistan', 'Islamabad'),
              ('Afghanistan', 'Kabul'), ('Bangladesh', 'Dhaka'), ('Nepal', 'Kathmandu'), ('Thailand', 'Bangkok'),
              ('Vietnam', 'Hanoi'), ('Indonesia', 'Jakarta'), ('Malaysia', 'Kuala Lumpur'),
              ('Philippines', 'Manila'), ('South Korea', 'Seoul'), ('North Korea', 'Pyongyang'),
              ('Mongolia', 'Ulaanbaatar'), ('Australia', 'Canberra'), ('New Zealand', 'Wellington'),
              ('United States', 'Washington'), ('Mexico', 'Mexico City'), ('Cuba', 'Havana'), ('Brazil', 'Brasilia'),
              ('Argentina', 'Buenos Aires'), ('Chile', 'Santiago'), ('Peru', 'Lima'), ('Colombia', 'Bogota'),
              ('Venezuela', 'Caracas'), ('Ecuador', 'Quito'), ('Bolivia', 'La Paz'), ('Uruguay', 'Montevideo'),
              ('Paraguay', 'Asuncion'), ('Kenya', 'Nairobi'), ('Ethiopia', 'Addis Ababa'), ('Nigeria', 'Abuja'),
              ('Ghana', 'Accra'), ('Morocco', 'Rabat'), ('Algeria', 'Algiers'), ('Tunisia', 'Tunis'),
              ('Libya', 'Tripoli'), ('Sudan', 'Khartoum'), ('South Africa', 'Pretoria'), ('Scotland', 'Edinburgh'),
              ('Wales', 'Cardiff'), ('Iceland', 'Reykjavik'), ('Estonia', 'Tallinn'), ('Latvia', 'Riga'),
              ('Lithuania', 'Vilnius'), ('Belarus', 'Minsk'), ('Georgia', 'Tbilisi'), ('Armenia', 'Yerevan'),
              ('Azerbaijan', 'Baku'), ('Kazakhstan', 'Astana'), ('Uzbekistan', 'Tashkent'), ('Qatar', 'Doha'),
              ('Kuwait', 'Kuwait City'), ('Oman', 'Muscat'), ('Yemen', 'Sanaa'), ('Sri Lanka', 'Colombo'),
              ('Myanmar', 'Naypyidaw'), ('Cambodia', 'Phnom Penh'), ('Laos', 'Vientiane'),
              ('Taiwan', 'Taipei'), ('Slovakia', 'Bratislava'),
              ('Slovenia', 'Ljubljana'), ('Albania', 'Tirana'), ('Malta', 'Valletta'),
              ('Cyprus', 'Nicosia'), ('Jamaica', 'Kingston'), ('Senegal', 'Dakar'), ('Tanzania', 'Dodoma'),
              ('Uganda', 'Kampala'), ('Zimbabwe', 'Harare'), ('Zambia', 'Lusaka'), ('Angola', 'Luanda'),
              ('Mali', 'Bamako'), ('Panama', 'Panama City'), ('Costa Rica', 'San Jose'), ('Haiti', 'Port-au-Prince')]
# Other city names an answer may give (a wrong capital is still an entity to agree or disagree on).
EXTRA_ENTITIES = ("New York", "Los Angeles", "Sydney", "Melbourne", "Toronto", "Montreal", "Vancouver", "Istanbul",
                  "Mumbai", "Shanghai", "Hong Kong", "Osaka", "Kyoto", "Barcelona", "Milan", "Munich", "Hamburg",
                  "Frankfurt", "St. Petersburg", "Saint Petersburg", "Alexandria", "Lagos", "Johannesburg",
                  "Cape Town", "Rio de Janeiro", "Sao Paulo", "Karachi", "Lahore", "Almaty", "Zurich", "Geneva",
                  "Auckland", "Casablanca", "Tel Aviv", "Dubai", "Abu Dhabi", "Manchester", "Glasgow", "Belfast")


@dataclass
class ConsistencyConfig:
    sae: tuple[str, ...] = field(metadata={"help": "SAE directory, or several at different layers: the per-layer "
                                           "consistency probe picks the one steered"})
    out: str = field(default="cache/steer/consistency", metadata={"help": "output directory"})
    model: str = field(default="", metadata={"help": "model (default: the one the SAE was trained on)"})
    features: int = field(default=16, metadata={"help": "number of features shifted"})
    alphas: tuple[float, ...] = field(default=(0.5, 1.0, 2.0, 4.0), metadata={
        "help": "shift strengths tried, in units of each feature's mean activation when firing"})
    train_facts: int = field(default=0, metadata={
        "help": "facts used to find features and pick alpha (0 = half); the rest are held out"})
    max_template_eta2: float = field(default=0.5, metadata={
        "help": "drop features whose activation the template explains more than this share of (eta^2)"})
    min_firing: float = field(default=0.05, metadata={
        "help": "eligible features fire on at least this share of the training prompts' question spans"})
    diffmean_coeffs: tuple[float, ...] = field(default=(1.0, 2.0, 4.0, 8.0), metadata={
        "help": "coefficients tried for the DiffMean-of-consistency vector (multiples of the contrast itself)"})
    null_draws: int = field(default=10, metadata={"help": "random feature sets given the same shifts (the null)"})
    probe_every: int = field(default=2, metadata={"help": "probe every Nth layer for consistency (plus the SAEs' layers)"})
    max_new_tokens: int = field(default=6, metadata={"help": "answer tokens generated"})
    neutral: int = field(default=8, metadata={"help": "neutral texts for the locality KL"})
    seed: int = field(default=0, metadata={"help": "seed of the train/held-out split of the facts and of the null"})
    device: str = field(default="cpu", metadata={"help": "device"})

    def __post_init__(self) -> None:
        self.sae = (self.sae,) if isinstance(self.sae, str) else tuple(self.sae)
        self.alphas = tuple(float(a) for a in self.alphas)
        self.diffmean_coeffs = tuple(float(a) for a in self.diffmean_coeffs)
        if not self.sae:
            raise WorkbenchError("give at least one --sae directory")
        if self.train_facts < 0:
            raise WorkbenchError(f"train_facts must be 0 (half of the known facts) or more; got {self.train_facts}")
        if self.features < 1 or not self.alphas or any(a <= 0 for a in self.alphas + self.diffmean_coeffs) \
                or not self.diffmean_coeffs:
            raise WorkbenchError("give features >= 1 and at least one alpha and DiffMean coefficient, all > 0")
        if not 0 < self.max_template_eta2 <= 1 or not 0 <= self.min_firing < 1:
            raise WorkbenchError(f"max_template_eta2 must be in (0, 1] and min_firing in [0, 1); got "
                                 f"{self.max_template_eta2}, {self.min_firing}")
        if self.null_draws < 0 or self.probe_every < 1 or self.max_new_tokens < 1:
            raise WorkbenchError("null_draws must be >= 0, probe_every >= 1 and max_new_tokens >= 1")


# ---------------------------------------------------------------------------- answers and labels


def known_entities() -> tuple[str, ...]:
    """Names an answer entity is matched against: every candidate's capital and other large cities."""
    return tuple(dict.fromkeys([c for _, c in CANDIDATES] + list(EXTRA_ENTITIES)))


def answer_entity(text: str, known: tuple[str, ...] = ()) -> str:
    """The entity an answer names: the earliest known name in it (longest at a tie: "New Delhi" over
    "Delhi"), else its first capitalised phrase ("the city of Paris" -> paris), else its first word."""
    low = text.lower()
    best: tuple[int, int, str] | None = None
    for name in known:
        m = re.search(r"(?<![a-z])" + re.escape(name.lower()) + r"(?![a-z])", low)
        if m and (best is None or (m.start(), -len(name)) < (best[0], best[1])):
            best = (m.start(), -len(name), name.lower())
    if best is not None:
        return best[2]
    m = re.search(r"[A-Z][\w'.-]*(?:\s+(?:de\s+|of\s+)?[A-Z][\w'.-]*)*", text)
    if m:
        return m.group(0).rstrip(".").lower()
    m = re.search(r"[A-Za-z]+", text)
    return m.group(0).lower() if m else ""


def fact_consistency(entities: list[str]) -> float:
    """Share of the fact's paraphrase pairs whose answers name the same entity (empty answers never agree)."""
    pairs = list(itertools.combinations(entities, 2))
    return sum(a == b and a != "" for a, b in pairs) / max(len(pairs), 1)


def per_fact(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per fact (in order of first appearance): consistency and accuracy of its paraphrases."""
    facts = list(dict.fromkeys(r["fact"] for r in rows))
    cons = [fact_consistency([r["entity"] for r in rows if r["fact"] == f]) for f in facts]
    acc = [float(np.mean([r["correct"] for r in rows if r["fact"] == f])) for f in facts]
    return {"facts": np.array(facts, dtype=object), "consistency": np.array(cons), "accuracy": np.array(acc)}


def known_facts(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The facts whose answer under the first template names the expected entity (what the model knows)."""
    return [(r["fact"], r["expected"]) for r in rows if r["template"] == 0 and r["correct"]]


def answers(lm: Any, facts: list[tuple[str, str]], ivs: list, max_new_tokens: int) -> list[dict[str, Any]]:
    prompts = [t.format(x=c) for c, _ in facts for t in TEMPLATES]
    g = generate(lm, prompts, ivs, max_new_tokens=max_new_tokens, batch_size=32)
    known = known_entities()
    rows = []
    for i, text in enumerate(g.texts):
        country, capital = facts[i // len(TEMPLATES)]
        ent = answer_entity(text, known)
        rows.append({"fact": country, "expected": capital, "template": i % len(TEMPLATES), "prompt": prompts[i],
                     "text": text, "entity": ent, "correct": ent == capital.lower()})
    return rows


# ---------------------------------------------------------------------------- contrast and selection


def consistency_contrast(codes: Tensor, fact: list, entity: list[str]) -> tuple[Tensor, Tensor, int]:
    """Within-fact contrast of consistent against inconsistent paraphrase pairs.

    `codes [N, F]` (one row per prompt), its fact and answer entity. For every fact holding both
    kinds of pairs: mean over its consistent pairs of the pair code (mean of the two prompts)
    minus the same over its inconsistent pairs. Returns the mean over those facts, its t statistic
    over facts (mean / standard error; 0 where the spread is 0), and how many facts contributed.
    """
    codes = codes.double()
    diffs = []
    for f in dict.fromkeys(fact):
        idx = [i for i, g in enumerate(fact) if g == f]
        cons, inc = [], []
        for i, j in itertools.combinations(idx, 2):
            (cons if entity[i] == entity[j] and entity[i] != "" else inc).append((codes[i] + codes[j]) / 2)
        if cons and inc:
            diffs.append(torch.stack(cons).mean(0) - torch.stack(inc).mean(0))
    if not diffs:
        raise WorkbenchError("no training fact has both consistent and inconsistent paraphrase pairs; the contrast "
                             "needs some (use more facts)")
    d = torch.stack(diffs)
    mean = d.mean(0)
    if d.shape[0] < 2:
        return mean, mean.sign(), 1
    se = d.std(0) / d.shape[0] ** 0.5
    t = torch.where(se > 0, mean / se.clamp_min(1e-30), torch.zeros_like(mean))
    return mean, t, d.shape[0]


def template_eta2(codes: Tensor, template: list[int]) -> Tensor:
    """Per feature, the share of its variance over prompts that the template explains (eta^2 of a one-way ANOVA)."""
    x = codes.double()
    total = (x - x.mean(0)).pow(2).sum(0)
    t = torch.as_tensor(template)
    between = torch.zeros_like(total)
    for k in t.unique():
        g = x[t == k]
        between += g.shape[0] * (g.mean(0) - x.mean(0)).pow(2)
    return torch.where(total > 0, between / total.clamp_min(1e-30), torch.zeros_like(total))


def eligible_features(codes: Tensor, template: list[int], max_eta2: float, min_firing: float) -> tuple[Tensor, Tensor]:
    """Features that fire on at least `min_firing` of the prompts and are not mostly template; and every eta^2."""
    eta = template_eta2(codes, template)
    fires = (codes > 0).double().mean(0)
    ok = (fires >= max(min_firing, 1e-12)) & (eta <= max_eta2)
    return ok, eta


def select_features(codes: Tensor, fact: list, template: list[int], entity: list[str], n: int, *,
                    max_eta2: float = 0.5, min_firing: float = 0.05) -> dict[str, Any]:
    """The `n` eligible features with the largest |t| of the consistency contrast, with their signs."""
    mean, t, n_facts = consistency_contrast(codes, fact, entity)
    ok, eta = eligible_features(codes, template, max_eta2, min_firing)
    if not bool(ok.any()):
        raise WorkbenchError("no feature is eligible (firing and not mostly template); lower --min-firing or raise "
                             "--max-template-eta2")
    score = torch.where(ok, t.abs(), torch.full_like(t, -1.0))
    top = score.topk(min(n, int(ok.sum()))).indices
    return {"features": [int(f) for f in top], "sign": [float(torch.sign(mean[f])) or 1.0 for f in top],
            "t": [float(t[f]) for f in top], "contrast": [float(mean[f]) for f in top],
            "template_eta2": [float(eta[f]) for f in top], "eligible": ok, "eta2": eta, "facts_contrasted": n_facts,
            "dropped_template": int(((eta > max_eta2) & ((codes > 0).double().mean(0) >= max(min_firing, 1e-12))).sum())}


# ---------------------------------------------------------------------------- the intervention


@dataclass
class FiringShift(Intervention):
    """Add `shifts[f]` to feature f where it fires (code > 0), never below zero; the error term is kept.

    LF-Steering's `activation + alpha` restricted to active features: a silent feature stays
    silent (the shift would otherwise write its direction into every token), and a negative shift
    stops at zero, where a ReLU-type code ends.
    """

    sae: Any
    shifts: dict[int, float]
    positions: Positions = field(default_factory=lambda: Positions("prompt"))
    hook: str = ""

    def __post_init__(self) -> None:
        self.hook = self.hook or self.sae.cfg.hook
        self._feats = torch.tensor(list(self.shifts), dtype=torch.long)
        self._vals = torch.tensor(list(self.shifts.values()), dtype=torch.float32)

    def new_codes(self, old: Tensor) -> Tensor:
        return torch.where(old > 0, (old + self._vals.to(old)).clamp_min(0), old)

    def delta(self, act: Tensor, site: HookSite) -> Tensor:
        return code_edit_delta(self.sae, self._feats, act, self.new_codes)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shifts": {str(k): v for k, v in self.shifts.items()}}


# ---------------------------------------------------------------------------- reading


def span_reads(lm: Any, prompts: list[str], hooks: list[str], batch_size: int = 32) -> dict[str, list[Tensor]]:
    """Per hook, per prompt, the `[tokens, d]` activations of the question span (BOS left out)."""
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    skip = len(lm.prefix_ids or [])
    for sl in chunks(len(prompts), batch_size):
        b = encode_texts(lm, prompts[sl])
        acts = capture(lm, b.tokens.to(_device(lm)), hooks, stop=True)
        mask = b.mask.clone()
        mask[:, :skip] = False
        for h in hooks:
            a = acts[h].float().cpu()
            out[h] += [a[i][mask[i]] for i in range(a.shape[0])]
    return out


def span_codes(sae: Any, reads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per prompt, the mean SAE code over its question span `[N, F]`, and per feature its mean when firing."""
    means, tot, cnt = [], torch.zeros(sae.num_features, dtype=torch.float64), torch.zeros(sae.num_features,
                                                                                           dtype=torch.float64)
    with torch.no_grad():
        for r in reads:
            z = sae.encode(r.to(sae.W_dec.device, sae.W_dec.dtype)).to_dense().double().cpu()
            means.append(z.mean(0))
            tot += z.sum(0)
            cnt += (z > 0).sum(0)
    return torch.stack(means), (tot / cnt.clamp_min(1)).float()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels) == 1
    p, n = s[y], s[~y]
    if len(p) == 0 or len(n) == 0:
        return float("nan")
    return float(((p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()) / (len(p) * len(n)))


def layer_probe(reads: dict[str, list[Tensor]], fact: list, entity: list[str], folds: int = 5,
                ridge: float = 10.0) -> dict[str, float]:
    """Per hook, the held-out-fact ROC AUC of a linear probe predicting pair consistency from |h_i - h_j|.

    The probe is ridge regression on standardised features (closed form, so 30 layers cost
    seconds); folds hold out whole facts, so it cannot score by recognising the fact.
    """
    pairs, labels, groups = [], [], []
    facts = list(dict.fromkeys(fact))
    for f in facts:
        idx = [i for i, g in enumerate(fact) if g == f]
        for i, j in itertools.combinations(idx, 2):
            pairs.append((i, j))
            labels.append(int(entity[i] == entity[j] and entity[i] != ""))
            groups.append(facts.index(f))
    y = np.array(labels, dtype=np.float64)
    grp = np.array(groups)
    fold_of = grp % min(folds, len(facts))
    out: dict[str, float] = {}
    if len(set(labels)) < 2:
        return {h: float("nan") for h in reads}
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    for h, rs in reads.items():
        m = torch.stack([r.mean(0) for r in rs]).double().numpy()
        x = np.abs(m[a] - m[b])
        pred = np.zeros(len(y))
        for k in np.unique(fold_of):
            tr, te = fold_of != k, fold_of == k
            mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
            xt = (x[tr] - mu) / sd
            w = np.linalg.solve(xt.T @ xt + ridge * len(xt) * np.eye(x.shape[1]) / x.shape[1] + 1e-9 * np.eye(x.shape[1]),
                                xt.T @ (y[tr] - y[tr].mean()))
            pred[te] = ((x[te] - mu) / sd) @ w
        out[h] = auc(pred, y.astype(int))
    return out


def diffmean_vector(reads: list[Tensor], fact: list, entity: list[str]) -> Tensor:
    """DiffMean of consistency: the within-fact consistent-minus-inconsistent contrast of the raw span means."""
    m = torch.stack([r.mean(0) for r in reads])
    mean, _, _ = consistency_contrast(m, fact, entity)
    return mean.float()


# ---------------------------------------------------------------------------- the run


def _interval(x: np.ndarray) -> dict[str, Any]:
    from evals.intervals import bootstrap_interval

    return bootstrap_interval(np.asarray(x, dtype=np.float64)).to_dict()


def _hook_layer(hook: str) -> int:
    m = re.search(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else -1


def run_consistency(cfg: ConsistencyConfig, lm: Any = None, saes: Any = None) -> dict[str, Any]:
    from steering.setup import check_fit, load_for_steering, load_model_for

    if lm is None or saes is None:
        from saes import load_sae

        lm, first = load_for_steering(cfg.model, cfg.sae[0], cfg.device)
        saes = [first] + [load_sae(d, device=cfg.device) for d in cfg.sae[1:]]
    saes = list(saes) if isinstance(saes, (list, tuple)) else [saes]
    for s in saes:
        check_fit(lm, s)
    del load_model_for
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    # 0. facts: the candidates the model knows, split into training and held-out facts
    base_all = answers(lm, CANDIDATES, [], cfg.max_new_tokens)
    facts = known_facts(base_all)
    n_train = cfg.train_facts or len(facts) // 2
    if len(facts) < 4 or not 2 <= n_train <= len(facts) - 2:
        raise WorkbenchError(f"the model knows {len(facts)} of {len(CANDIDATES)} facts; train_facts {cfg.train_facts} "
                             "must leave at least 2 for training and 2 held out")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(facts))
    train = [facts[i] for i in sorted(order[:n_train])]
    test = [facts[i] for i in sorted(order[n_train:])]
    train_names, test_names = {c for c, _ in train}, {c for c, _ in test}

    # 1. labels: the model's own answers on the training facts
    base_train = [r for r in base_all if r["fact"] in train_names]
    prompts = [r["prompt"] for r in base_train]
    fact = [r["fact"] for r in base_train]
    template = [r["template"] for r in base_train]
    entity = [r["entity"] for r in base_train]

    # 2. layer: a probe of consistency at every `probe_every`-th block and at each SAE's hook
    sae_hooks = [s.cfg.hook for s in saes]
    n_layers = int(getattr(lm, "n_layers", 0) or 0)
    probe_hooks = list(dict.fromkeys([f"blocks.{i}.hook_resid_post" for i in range(0, n_layers, cfg.probe_every)]
                                     + sae_hooks))
    probe_hooks = [h for h in probe_hooks if _valid_hook(lm, h)]
    reads = span_reads(lm, prompts, probe_hooks)
    probe = layer_probe(reads, fact, entity)
    sae = max(saes, key=lambda s: probe.get(s.cfg.hook, float("-inf")))
    hook = sae.cfg.hook
    best_any = max(probe, key=lambda h: probe[h]) if probe else hook

    # 3-4. contrast at the chosen SAE, on the question-span codes
    codes, mean_active = span_codes(sae, reads[hook])
    sel = select_features(codes, fact, template, entity, cfg.features, max_eta2=cfg.max_template_eta2,
                          min_firing=cfg.min_firing)
    feats, signs = sel["features"], sel["sign"]

    def shift_of(fs: list[int], sg: list[float], alpha: float) -> FiringShift:
        return FiringShift(sae, {f: alpha * s * float(mean_active[f]) for f, s in zip(fs, sg)})

    raw: list[dict[str, Any]] = [{**r, "split": "train", "method": "none", "alpha": 0.0} for r in base_train]

    def choose(make, grid, name):  # the coefficient with the best training consistency (ties: the smaller)
        best_a, best_c = 0.0, float(per_fact(base_train)["consistency"].mean())
        for a in grid:
            rows = answers(lm, train, [make(a)], cfg.max_new_tokens)
            raw.extend({**r, "split": "train", "method": name, "alpha": a} for r in rows)
            c = float(per_fact(rows)["consistency"].mean())
            log.info("%s %g: training consistency %.3f", name, a, c)
            if c > best_c:
                best_a, best_c = a, c
        return best_a, best_c

    alpha, train_best = choose(lambda a: shift_of(feats, signs, a), cfg.alphas, "sae")
    v = diffmean_vector(reads[hook], fact, entity)
    dm_coeffs = cfg.diffmean_coeffs
    dm_coeff, dm_train = choose(lambda c: add_direction(hook, v, c, positions=Positions("prompt")), dm_coeffs, "diffmean")

    # 5. held-out facts: before, SAE shift, DiffMean, and the random-feature null
    def held(ivs, name, a):
        rows = answers(lm, test, ivs, cfg.max_new_tokens)
        raw.extend({**r, "split": "test", "method": name, "alpha": a} for r in rows)
        return per_fact(rows)

    base_test = [r for r in base_all if r["fact"] in test_names]
    raw.extend({**r, "split": "test", "method": "none", "alpha": 0.0} for r in base_test)
    before = per_fact(base_test)
    use_alpha = alpha if alpha > 0 else cfg.alphas[0]  # alpha 0 would make "after" a copy of "before"
    sae_iv = shift_of(feats, signs, use_alpha)
    after = held([sae_iv], "sae", use_alpha)
    dm_use = dm_coeff if dm_coeff > 0 else dm_coeffs[0]
    dm_after = held([add_direction(hook, v, dm_use, positions=Positions("prompt"))], "diffmean", dm_use)
    pool = torch.nonzero(sel["eligible"]).flatten().tolist()
    null_means, null_deltas = [], []
    for k in range(cfg.null_draws):
        fs = [int(f) for f in rng.choice(pool, size=min(len(feats), len(pool)), replace=False)]
        res = held([shift_of(fs, signs[: len(fs)], use_alpha)], f"null{k}", use_alpha)
        null_means.append(float(res["consistency"].mean()))
        null_deltas.append(res["consistency"] - before["consistency"])

    u0 = generate(lm, STEER_PROMPTS, [], max_new_tokens=12).new_ids
    u1 = generate(lm, STEER_PROMPTS, [sae_iv], max_new_tokens=12).new_ids
    everywhere = FiringShift(sae, sae_iv.shifts, positions=Positions("all"))
    d_sae = after["consistency"] - before["consistency"]
    summary = {
        "hook": hook, "alpha": use_alpha, "alpha_chosen": alpha,
        "facts": {"candidates": len(CANDIDATES), "known": len(facts), "train": len(train), "held_out": len(test),
                  "contrasted": sel["facts_contrasted"], "paraphrases": len(TEMPLATES),
                  "held_out_names": sorted(test_names)},
        "probe_auc": probe, "probe_best_hook": best_any,
        "features": {"ids": feats, "sign": signs, "t": sel["t"], "template_eta2": sel["template_eta2"],
                     "eligible": len(pool), "dropped_template": sel["dropped_template"]},
        "train": {"before": float(per_fact(base_train)["consistency"].mean()), "sae_best": train_best,
                  "diffmean_best": dm_train, "diffmean_coeff": dm_use},
        "held_out": {
            "before": {"consistency": _interval(before["consistency"]), "accuracy": _interval(before["accuracy"])},
            "sae": {"consistency": _interval(after["consistency"]), "accuracy": _interval(after["accuracy"]),
                    "delta": _interval(d_sae)},
            "diffmean": {"consistency": _interval(dm_after["consistency"]),
                         "accuracy": _interval(dm_after["accuracy"]),
                         "delta": _interval(dm_after["consistency"] - before["consistency"])},
            "null": {"draws": len(null_means), "consistency_means": null_means,
                     "mean": float(np.mean(null_means)) if null_means else float("nan"),
                     "sd": float(np.std(null_means, ddof=1)) if len(null_means) > 1 else float("nan"),
                     "share_at_least_sae": (float(np.mean([m >= float(after["consistency"].mean())
                                                           for m in null_means])) if null_means else float("nan")),
                     "sae_minus_null": (_interval(d_sae - np.mean(null_deltas, 0)) if null_deltas else None)},
        },
        "locality": {"unrelated_changed": sum(a != b for a, b in zip(u0, u1)) / len(STEER_PROMPTS),
                     "kl_neutral_every_token": NeutralKL(lm, neutral_texts(cfg.neutral))([everywhere])},
    }
    atomic_write_bytes(out / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in raw).encode())
    atomic_write_json(out / "summary.json", summary)
    _plot(summary, out / "plot.png")
    return summary


def _valid_hook(lm: Any, hook: str) -> bool:
    try:
        lm.check_hooks([hook])
        return True
    except Exception:
        return False


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = summary["held_out"]
    names = [("before", "before"), ("sae", f"SAE shift (alpha {summary['alpha']:g})"), ("diffmean", "DiffMean")]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (k, label) in enumerate(names):
        c = h[k]["consistency"]
        ax.bar(i, c["estimate"], 0.6, yerr=[[c["estimate"] - c["low"]], [c["high"] - c["estimate"]]], label=label)
    if h["null"]["draws"]:
        ax.axhline(h["null"]["mean"], color="k", ls="--", lw=1, label="random-feature null")
    ax.set_xticks(range(len(names)), [n for n, _ in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out consistency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)


def _iv(d: dict[str, Any]) -> str:
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def format_summary(s: dict[str, Any]) -> str:
    h, loc, f = s["held_out"], s["locality"], s["facts"]
    null = h["null"]
    return "\n".join([
        f"consistency steering at {s['hook']} (probe's best layer: {s['probe_best_hook']}): {len(s['features']['ids'])} "
        f"features, alpha {s['alpha']:g}; the model knows {f['known']} of {f['candidates']} facts: {f['train']} for "
        f"training ({f['contrasted']} contrasted), {f['held_out']} held out, {f['paraphrases']} paraphrases each; "
        f"95% bootstrap intervals over facts",
        f"held-out consistency {_iv(h['before']['consistency'])} -> SAE {_iv(h['sae']['consistency'])} "
        f"(change {_iv(h['sae']['delta'])}); DiffMean {_iv(h['diffmean']['consistency'])} "
        f"(change {_iv(h['diffmean']['delta'])})",
        f"random-feature null ({null['draws']} draws): {null['mean']:.3f} +- {null['sd']:.3f}; share of draws at or "
        f"above the SAE shift {null['share_at_least_sae']:.2f}",
        f"accuracy {_iv(h['before']['accuracy'])} -> {_iv(h['sae']['accuracy'])}",
        f"locality: {loc['unrelated_changed']:.0%} of unrelated prompts changed; KL on neutral text (shift at every "
        f"token) {loc['kl_neutral_every_token']:.4f}",
    ])
