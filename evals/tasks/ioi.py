"""Indirect object identification (IOI): "Then, Mary and John ... John gave a drink to" -> " Mary".

Attributes of each prompt (Makelov, Lange, Nanda 2024, after Wang et al. 2022): IO, the indirect
object's name; S, the subject's name (said twice: S1 and S2); Pos, ABB when IO comes first, BAB
when S does. Positions: IO, S1, S2 and END (the last token). Metric: the logit difference
LD = logit(IO) - logit(S) at END; a prompt is right when LD > 0 (chance: 50%).

Train and test templates never overlap (train templates say nothing of places and objects; test
templates do), so a dictionary or SAE fitted on the train split is judged on sentences it never saw.
Names, places and objects are kept only where the tokenizer at hand makes them one token (with
the leading space), and templates only where they tokenize to the common length, so every prompt
has one length and its named positions are known by construction. Counterfactuals change one
attribute: IO replaces the IO token, S replaces both S tokens, Pos swaps the first two names.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import torch
from torch import Tensor

from evals.tasks.base import TaskBatch, answer_metric
from workbench.errors import WorkbenchError

# {A} and {B} are the first two names (A = IO under ABB), {C} is the second mention of S.
TRAIN_TEMPLATES = (
    "Then, {A} and {B} had a long and really crazy argument. Afterwards, {C} said to",
    "Then, {A} and {B} had a lot of fun at the party. Afterwards, {C} gave a gift to",
    "When {A} and {B} got a snack after the long day, {C} decided to give it to",
    "Then, {A} and {B} had a long talk after the big match. Later, {C} wrote a letter to",
)
TEST_TEMPLATES = (
    "Then, {A} and {B} were working at the {place}. {C} decided to give a {object} to",
    "Then, {A} and {B} went to the {place}. {C} gave a {object} to",
    "When {A} and {B} got to the {place}, {C} handed the {object} to",
    "After {A} and {B} went to the {place}, {C} gave a {object} to",
    "While {A} and {B} were at the {place}, {C} gave the {object} to",
    "Then, {A} and {B} were relaxing at the {place}. {C} decided to give a {object} to",
    "Then, {A} and {B} were sitting in the {place}. {C} decided to bring a {object} to",
    "Then, {A} and {B} were eating at the {place}. {C} wanted to hand a {object} to",
)
TEMPLATES = {"train": TRAIN_TEMPLATES, "test": TEST_TEMPLATES}

NAMES = (
    "Aaron Adam Alan Alex Alice Amy Andrew Andy Anna Anne Arthur Ashley Barbara Ben Betty Bill Bob Brad Brian "
    "Bruce Carl Carol Charles Charlie Chris Claire Craig Dan Daniel Dave David Dennis Diana Donna Doug Ed Edward "
    "Elizabeth Ellen Emily Emma Eric Frank Fred Gary George Grace Greg Hannah Harry Helen Henry Jack Jacob James "
    "Jane Janet Jason Jean Jeff Jennifer Jerry Jessica Jim Joe John Jon Jonathan Joseph Josh Joy Julia Julie "
    "Karen Kate Katie Keith Kelly Ken Kevin Kim Larry Laura Leo Linda Lisa Louis Lucy Luke Mark Martin Mary "
    "Matt Max Megan Michael Michelle Mike Nancy Nick Nina Noah Oliver Pat Patrick Paul Peter Philip Rachel "
    "Ralph Ray Rebecca Richard Rick Rob Robert Roger Ron Rose Roy Russell Ruth Ryan Sam Sandra Sara Sarah "
    "Scott Sean Simon Sophie Stephen Steve Sue Susan Tim Tom Tony Victoria Walter Wayne William Zoe"
).split()
PLACES = (
    "school store hospital restaurant station park office garden house library church museum market bank "
    "beach airport hotel theater kitchen farm lake river shop mall zoo gym cafe bar club field court "
    "studio factory village city forest camp castle temple island"
).split()
OBJECTS = (
    "ring kiss bone basketball computer necklace drink snack apple book pen bag key letter gift ball car "
    "hat cake flower phone card coin box cup toy shirt watch map ticket lamp knife chair bottle sandwich "
    "cookie guitar camera bike pencil bracelet coat jacket egg orange banana pizza candle picture painting"
).split()

ATTRIBUTES = ("IO", "S", "Pos")
POSITIONS = ("IO", "S1", "S2", "END")


def single_tokens(tokenizer: Any, words: tuple[str, ...] | list[str]) -> dict[str, int]:
    """The words that are one token with a leading space, mapped to that token."""
    out = {}
    for w in words:
        ids = tokenizer.encode(" " + w, add_special_tokens=False)
        if len(ids) == 1:
            out[w] = int(ids[0])
    return out


class IOITask:
    """IOI prompts for one tokenizer (see the module docstring). `prefix` goes before every prompt (BOS)."""

    name = "ioi"
    attributes = ATTRIBUTES
    positions = POSITIONS
    chance_accuracy = 0.5

    def __init__(self, tokenizer: Any, prefix: tuple[int, ...] = (), *, min_names: int = 4) -> None:
        if tokenizer is None:
            raise WorkbenchError("the IOI task needs a text model with a tokenizer")
        self.tokenizer = tokenizer
        self.prefix = tuple(int(i) for i in prefix)
        self.names = single_tokens(tokenizer, NAMES)
        if len(self.names) < min_names:
            raise WorkbenchError(
                f"the IOI task needs at least {min_names} names that are one token with a leading space; this "
                f"tokenizer ({type(tokenizer).__name__}) makes {len(self.names)} of {len(NAMES)} names one token "
                f"({', '.join(self.names) or 'none'})")
        self.places = single_tokens(tokenizer, PLACES)
        self.objects = single_tokens(tokenizer, OBJECTS)
        if not self.places or not self.objects:
            raise WorkbenchError(f"the IOI test templates need single-token places and objects; this tokenizer has "
                                 f"{len(self.places)} of {len(PLACES)} places and {len(self.objects)} of "
                                 f"{len(OBJECTS)} objects as one token")
        self.templates, self.dropped, self.length = self._templates()

    # --- templates --------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.prefix) + list(self.tokenizer.encode(text, add_special_tokens=False))

    def _layout(self, template: str) -> tuple[list[int], dict[str, int]] | None:
        """Token ids of the template with placeholder words, and where each slot sits (None if a slot splits)."""
        a, b = list(self.names)[:2]
        fill = {"A": a, "B": b, "C": b, "place": next(iter(self.places)), "object": next(iter(self.objects))}
        text = template.format(**fill)
        ids = self._encode(text)
        slots: dict[str, int] = {}
        # Locate each slot by tokenizing the text up to it: robust to any tokenizer's merges.
        for key in ("A", "B", "C", "place", "object"):
            tag = "{" + key + "}"
            if tag not in template:
                continue
            head = template.split(tag)[0].format(**fill).rstrip(" ")
            pos = len(self._encode(head)) if head else len(self.prefix)
            if pos >= len(ids) or ids[pos] != self._word_id(key, fill[key]):
                return None
            slots[key] = pos
        return ids, slots

    def _word_id(self, key: str, word: str) -> int:
        return {"place": self.places, "object": self.objects}.get(key, self.names)[word]

    def _templates(self) -> tuple[dict[str, list[tuple[str, dict[str, int]]]], list[str], int]:
        laid = {split: [(t, self._layout(t)) for t in ts] for split, ts in TEMPLATES.items()}
        lengths = Counter(len(lay[0]) for ts in laid.values() for _, lay in ts if lay is not None)
        if not lengths:
            raise WorkbenchError("no IOI template keeps its names, places and objects as single tokens with this tokenizer")
        length = lengths.most_common(1)[0][0]
        kept: dict[str, list[tuple[str, dict[str, int]]]] = {}
        dropped = []
        for split, ts in laid.items():
            kept[split] = [(t, lay[1]) for t, lay in ts if lay is not None and len(lay[0]) == length]
            dropped += [t for t, lay in ts if lay is None or len(lay[0]) != length]
            if not kept[split]:
                raise WorkbenchError(f"no IOI {split} template tokenizes to the common length {length} with this tokenizer")
        return kept, dropped, length

    # --- prompts ----------------------------------------------------------------------------
    def prompts(self, n: int, split: str = "test", seed: int = 0) -> TaskBatch:
        if split not in self.templates:
            raise WorkbenchError(f"unknown IOI split {split!r}; valid choices: {', '.join(self.templates)}")
        rng = random.Random(f"ioi-{split}-{seed}")
        names, places, objects = list(self.names), list(self.places), list(self.objects)
        rows = []
        for i in range(n):
            t = i % len(self.templates[split])
            io, s = rng.sample(names, 2)
            rows.append({"t": t, "IO": io, "S": s, "Pos": "ABB" if rng.random() < 0.5 else "BAB",
                         "place": rng.choice(places), "object": rng.choice(objects)})
        return self._build(rows, split)

    def _build(self, rows: list[dict[str, Any]], split: str) -> TaskBatch:
        toks, texts = [], []
        pos = {p: [] for p in POSITIONS}
        for r in rows:
            template, slots = self.templates[split][r["t"]]
            a, b = (r["IO"], r["S"]) if r["Pos"] == "ABB" else (r["S"], r["IO"])
            text = template.format(A=a, B=b, C=r["S"], place=r["place"], object=r["object"])
            ids = self._encode(text)
            if len(ids) != self.length:  # cannot happen with single-token words; guards the construction
                raise AssertionError(f"IOI prompt {text!r} has {len(ids)} tokens, expected {self.length}")
            toks.append(ids)
            texts.append(text)
            pos["IO"].append(slots["A"] if r["Pos"] == "ABB" else slots["B"])
            pos["S1"].append(slots["B"] if r["Pos"] == "ABB" else slots["A"])
            pos["S2"].append(slots["C"])
            pos["END"].append(self.length - 1)
        answers = torch.tensor([[self.names[r["IO"]], self.names[r["S"]]] for r in rows], dtype=torch.long)
        batch = TaskBatch(torch.tensor(toks, dtype=torch.long), {a: [r[a] for r in rows] for a in ATTRIBUTES},
                          {p: torch.tensor(v, dtype=torch.long) for p, v in pos.items()}, answers,
                          torch.tensor([r["t"] for r in rows], dtype=torch.long), split, texts)
        batch.rows = rows  # type: ignore[attr-defined]  # what counterfactuals rebuild from
        return batch

    def counterfactual(self, batch: TaskBatch, attribute: str, seed: int = 0) -> TaskBatch:
        if attribute not in ATTRIBUTES:
            raise WorkbenchError(f"unknown IOI attribute {attribute!r}; valid choices: {', '.join(ATTRIBUTES)}")
        rng = random.Random(f"ioi-cf-{attribute}-{seed}")
        names = list(self.names)
        rows = []
        for r in batch.rows:  # type: ignore[attr-defined]
            r = dict(r)
            if attribute == "Pos":
                r["Pos"] = "BAB" if r["Pos"] == "ABB" else "ABB"
            else:
                other = "S" if attribute == "IO" else "IO"
                r[attribute] = rng.choice([x for x in names if x not in (r["IO"], r["S"])])
                assert r[attribute] != r[other]
            rows.append(r)
        return self._build(rows, batch.split)

    def metric(self, last_logits: Tensor, batch: TaskBatch) -> Tensor:
        return answer_metric(last_logits, batch)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "names": len(self.names), "names_total": len(NAMES), "places": len(self.places),
                "places_total": len(PLACES), "objects": len(self.objects), "objects_total": len(OBJECTS),
                "length": self.length, "prefix": list(self.prefix),
                "templates": {s: [t for t, _ in ts] for s, ts in self.templates.items()},
                "dropped_templates": self.dropped}
