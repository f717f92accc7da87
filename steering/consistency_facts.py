"""The facts consistency steering asks about, and how answers are scored: paraphrase templates,
country -> capital candidates, the answer entity of a continuation, and agreement within a fact
(see `steering.consistency` for the method)."""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np

from steering.generation import generate

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
