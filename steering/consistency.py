"""Consistency steering (after LF-Steering, arXiv 2501.11036): make paraphrases of a question agree.

Facts written for the small offline model ("The capital of France is" -> " Paris"), each asked in
several paraphrases. On the training facts, the SAE codes at the last prompt token are compared
between paraphrases the model answers correctly and those it gets wrong; the features whose mean
activation differs most are shifted (`activation + alpha * difference`, at the last prompt token)
so that every paraphrase looks like one the model answers well. alpha is chosen on the training
facts; reported on held-out facts: answer consistency (share of paraphrase pairs with the same
first answer word) and accuracy before and after, and locality: KL on neutral text with the shift
at every token, and the share of unrelated prompts whose greedy continuation changes.

One deviation from the paper, said plainly: it picks the layer that best separates consistent
from inconsistent pairs and trains a TopK SAE there; here the layer is the given SAE's.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steering.concepts import STEER_PROMPTS, neutral_texts
from steering.generation import generate
from steering.interventions import shift_features
from steering.measures import NeutralKL
from steering.positions import Positions
from steering.reading import hook_activations
from steering.vectors import sae_code_means
from workbench.config import save_config
from workbench.errors import WorkbenchError
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
FACTS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Spain", "Madrid"),
         ("England", "London"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"),
         ("Greece", "Athens"), ("Canada", "Ottawa"), ("Ireland", "Dublin")]


@dataclass
class ConsistencyConfig:
    sae: str = field(metadata={"help": "SAE directory (the hook point steered)"})
    out: str = field(default="cache/steer/consistency", metadata={"help": "output directory"})
    model: str = field(default="", metadata={"help": "model (default: the one the SAE was trained on)"})
    features: int = field(default=16, metadata={"help": "number of features shifted"})
    alphas: tuple[float, ...] = field(default=(0.5, 1.0, 2.0, 4.0), metadata={"help": "shift strengths tried"})
    train_facts: int = field(default=6, metadata={"help": "facts used to find features and pick alpha; the rest are held out"})
    max_new_tokens: int = field(default=4, metadata={"help": "answer tokens generated"})
    neutral: int = field(default=8, metadata={"help": "neutral texts for the locality KL"})
    device: str = field(default="cpu", metadata={"help": "device"})

    def __post_init__(self) -> None:
        if not 1 <= self.train_facts < len(FACTS):
            raise WorkbenchError(f"train_facts must be 1..{len(FACTS) - 1} (the rest are held out); got {self.train_facts}")
        if self.features < 1 or not self.alphas:
            raise WorkbenchError("give features >= 1 and at least one alpha")


def _word(text: str) -> str:
    m = re.search(r"[A-Za-z]+", text)
    return m.group(0).lower() if m else ""


def answers(lm: Any, facts: list[tuple[str, str]], ivs: list, max_new_tokens: int) -> list[dict[str, Any]]:
    prompts = [t.format(x=c) for c, _ in facts for t in TEMPLATES]
    g = generate(lm, prompts, ivs, max_new_tokens=max_new_tokens)
    rows = []
    for i, text in enumerate(g.texts):
        country, capital = facts[i // len(TEMPLATES)]
        rows.append({"fact": country, "expected": capital, "template": i % len(TEMPLATES), "prompt": prompts[i],
                     "text": text, "answer": _word(text), "correct": capital.lower() in text.lower()})
    return rows


def consistency(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Share of same-fact paraphrase pairs with the same first answer word; accuracy."""
    agree, pairs = 0, 0
    for fact in dict.fromkeys(r["fact"] for r in rows):
        ans = [r["answer"] for r in rows if r["fact"] == fact]
        for a, b in itertools.combinations(ans, 2):
            pairs += 1
            agree += a == b
    return {"consistency": agree / max(pairs, 1), "accuracy": sum(r["correct"] for r in rows) / max(len(rows), 1)}


def find_shift(lm: Any, sae: Any, rows: list[dict[str, Any]], n: int) -> dict[int, float]:
    """Features whose last-token activation differs most between correct and wrong paraphrases."""
    good = [r["prompt"] for r in rows if r["correct"]]
    bad = [r["prompt"] for r in rows if not r["correct"]]
    if not good or not bad:
        raise WorkbenchError(f"the training facts were answered {len(good)} times right and {len(bad)} wrong; "
                             "the contrast needs both (use other facts or more of them)")
    hook = sae.cfg.hook
    diff = (sae_code_means(sae, hook_activations(lm, good, hook, read="last"))
            - sae_code_means(sae, hook_activations(lm, bad, hook, read="last")))
    top = diff.abs().topk(min(n, diff.numel())).indices
    return {int(f): float(diff[f]) for f in top}


def run_consistency(cfg: ConsistencyConfig, lm: Any = None, sae: Any = None) -> dict[str, Any]:
    from steering.setup import check_fit, load_for_steering

    if lm is None or sae is None:
        lm, sae = load_for_steering(cfg.model, cfg.sae, cfg.device)
    else:
        check_fit(lm, sae)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    train, test = FACTS[: cfg.train_facts], FACTS[cfg.train_facts:]
    last = Positions("last")
    base_train = answers(lm, train, [], cfg.max_new_tokens)
    shift = find_shift(lm, sae, base_train, cfg.features)
    raw: list[dict[str, Any]] = [{**r, "split": "train", "alpha": 0.0} for r in base_train]
    best_alpha, best = 0.0, consistency(base_train)["consistency"]
    for a in cfg.alphas:
        rows = answers(lm, train, [shift_features(sae, {f: a * v for f, v in shift.items()}, positions=last)],
                       cfg.max_new_tokens)
        raw += [{**r, "split": "train", "alpha": a} for r in rows]
        c = consistency(rows)["consistency"]
        log.info("alpha %g: training consistency %.3f", a, c)
        if c > best:
            best_alpha, best = a, c
    iv = shift_features(sae, {f: best_alpha * v for f, v in shift.items()}, positions=last)
    before, after = answers(lm, test, [], cfg.max_new_tokens), answers(lm, test, [iv], cfg.max_new_tokens)
    raw += [{**r, "split": "test", "alpha": 0.0} for r in before] + [{**r, "split": "test", "alpha": best_alpha}
                                                                      for r in after]
    unrelated = STEER_PROMPTS
    u0 = generate(lm, unrelated, [], max_new_tokens=12).new_ids
    u1 = generate(lm, unrelated, [iv], max_new_tokens=12).new_ids
    everywhere = shift_features(sae, {f: best_alpha * v for f, v in shift.items()})
    summary = {
        "hook": sae.cfg.hook, "features": shift, "alpha": best_alpha,
        "train": {"before": consistency(base_train), "best": best},
        "held_out": {"before": consistency(before), "after": consistency(after)},
        "locality": {"unrelated_changed": sum(a != b for a, b in zip(u0, u1)) / len(unrelated),
                     "kl_neutral_every_token": NeutralKL(lm, neutral_texts(cfg.neutral))([everywhere])},
    }
    atomic_write_bytes(out / "rows.jsonl", "".join(json.dumps(r) + "\n" for r in raw).encode())
    atomic_write_json(out / "summary.json", summary)
    _plot(summary, out / "plot.png")
    return summary


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = summary["held_out"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    names = ["consistency", "accuracy"]
    x = torch.arange(len(names)).float()
    ax.bar(x - 0.2, [h["before"][n] for n in names], 0.4, label="before")
    ax.bar(x + 0.2, [h["after"][n] for n in names], 0.4, label=f"after (alpha {summary['alpha']:g})")
    ax.set_xticks(x.tolist(), names)
    ax.set_ylim(0, 1)
    ax.set_title("held-out paraphrases")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)


def format_summary(s: dict[str, Any]) -> str:
    b, a = s["held_out"]["before"], s["held_out"]["after"]
    loc = s["locality"]
    return "\n".join([
        f"consistency steering at {s['hook']}: {len(s['features'])} features, alpha {s['alpha']:g} (chosen on training facts)",
        f"held-out consistency {b['consistency']:.3f} -> {a['consistency']:.3f}; accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}",
        f"locality: {loc['unrelated_changed']:.0%} of unrelated prompts changed; KL on neutral text (shift at every "
        f"token) {loc['kl_neutral_every_token']:.4f}",
    ])
