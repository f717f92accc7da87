"""Concepts to steer toward, written for the small offline model, and the neutral text steering is judged on.

A concept is two prompt sets (sentences about it, and matched sentences about other things, paired
in order for PCA of differences) plus the words whose appearance shows it. Users bring their own
as JSON: {"name": ..., "positive": [...], "negative": [...], "target_words": [...]}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError

NEGATIVE = [
    "The committee approved the new budget on Tuesday.",
    "He fixed the broken chair with some glue.",
    "The train to the city leaves at nine.",
    "She wrote a letter to her grandmother.",
    "The office printer ran out of paper again.",
    "They painted the fence white last summer.",
    "The lecture covered the history of tax law.",
    "My neighbour parked his car in the garage.",
    "The report was finished just before the deadline.",
    "We moved the old desk into the spare room.",
    "The manager signed the contract this morning.",
    "He forgot his keys at the library.",
]

BUILTIN: dict[str, dict[str, list[str]]] = {
    "ocean": {
        "positive": [
            "The waves crashed against the rocky shore of the ocean.",
            "We sailed across the blue sea for three days.",
            "Fish and whales swim deep beneath the ocean surface.",
            "The beach was covered in shells after the tide went out.",
            "Salt water sprayed over the deck of the fishing boat.",
            "The sailors watched the sea grow calm at sunset.",
            "Coral reefs grow in warm, shallow ocean water.",
            "The lighthouse guided ships safely into the harbour.",
            "She swam in the sea near the sandy beach.",
            "Sharks hunt in the open ocean far from land.",
            "The tide rose and the waves covered the sand.",
            "A storm at sea pushed huge waves toward the coast.",
        ],
        "target_words": ["ocean", "sea", "waves", "beach", "water", "boat", "ship", "fish", "shore", "tide"],
    },
    "food": {
        "positive": [
            "She baked fresh bread and served it with butter.",
            "The soup was hot, salty and full of vegetables.",
            "We ate pasta with tomato sauce and cheese for dinner.",
            "The chef cooked the chicken with garlic and herbs.",
            "He loves eating chocolate cake after lunch.",
            "The restaurant serves delicious pizza and salad.",
            "Fresh fruit like apples and bananas make a good snack.",
            "They grilled meat and corn at the picnic.",
            "My grandmother's recipe uses rice, beans and spices.",
            "The breakfast had eggs, toast and orange juice.",
            "The cook tasted the sauce and added more pepper.",
            "We shared a plate of cheese and warm bread.",
        ],
        "target_words": ["food", "eat", "cook", "delicious", "bread", "cheese", "dinner", "recipe", "meal", "taste"],
    },
    "music": {
        "positive": [
            "The band played loud music at the concert.",
            "She sang a beautiful song on the piano.",
            "He practises the guitar every evening.",
            "The orchestra performed a symphony by Beethoven.",
            "The singer released a new album of love songs.",
            "Drums and bass filled the room with rhythm.",
            "The choir sang hymns in the old church.",
            "He listened to jazz music on the radio.",
            "The violin melody was slow and sad.",
            "Fans cheered as the rock band began to play.",
            "She wrote the lyrics and composed the melody.",
            "The music festival had dozens of famous bands.",
        ],
        "target_words": ["music", "song", "sing", "band", "guitar", "piano", "concert", "album", "melody", "play"],
    },
    "space": {
        "positive": [
            "The rocket launched into space carrying three astronauts.",
            "Stars and planets fill the night sky of the galaxy.",
            "The astronauts walked on the surface of the moon.",
            "Mars is the fourth planet from the sun.",
            "The telescope captured images of a distant galaxy.",
            "The space station orbits the earth every ninety minutes.",
            "A comet passed close to the sun last year.",
            "Black holes bend light with their enormous gravity.",
            "The satellite sent pictures of Jupiter back to earth.",
            "Astronomers discovered a new star in the constellation.",
            "The spacecraft landed safely on the planet's surface.",
            "The universe contains billions of galaxies and stars.",
        ],
        "target_words": ["space", "planet", "star", "moon", "rocket", "galaxy", "earth", "sun", "orbit", "astronaut"],
    },
    "sports": {
        "positive": [
            "The team scored a goal in the last minute of the match.",
            "She won the race and took home a gold medal.",
            "The football players trained hard before the game.",
            "He hit the ball over the fence for a home run.",
            "The tennis champion won the final in three sets.",
            "Fans cheered as the team won the championship.",
            "The coach told the players to defend the goal.",
            "The basketball game went into overtime.",
            "Runners lined up at the start of the marathon.",
            "The striker kicked the ball past the goalkeeper.",
            "The athletes competed in the Olympic games.",
            "The referee blew the whistle to end the match.",
        ],
        "target_words": ["team", "game", "match", "goal", "win", "play", "ball", "score", "player", "coach"],
    },
}

STEER_PROMPTS = [
    "I woke up this morning and",
    "My friend told me that",
    "The best thing about weekends is",
    "Yesterday I went to",
    "Here is a short story:",
    "In my opinion,",
    "Let me tell you about",
    "The town was quiet until",
    "She opened the door and",
    "The most important thing in life is",
    "When I was a child,",
    "He looked out the window and saw",
]

NEUTRAL_TEXT = NEGATIVE


@dataclass
class Concept:
    name: str
    positive: list[str]
    negative: list[str]
    target_words: list[str]

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise WorkbenchError(f"concept {self.name!r} has an empty prompt set ({len(self.positive)} positive, "
                                 f"{len(self.negative)} negative); give at least one of each")


def load_concept(name_or_path: str) -> Concept:
    """A built-in concept by name, or a JSON file with name/positive/negative/target_words."""
    if name_or_path in BUILTIN:
        c = BUILTIN[name_or_path]
        return Concept(name_or_path, list(c["positive"]), list(NEGATIVE), list(c["target_words"]))
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise WorkbenchError(f"{p} is not valid JSON: {e}") from None
        return Concept(d.get("name", p.stem), list(d.get("positive", [])), list(d.get("negative", NEGATIVE)),
                       list(d.get("target_words", [])))
    raise WorkbenchError(f"unknown concept {name_or_path!r}; valid choices: {', '.join(BUILTIN)}, or a .json file "
                         "with positive/negative/target_words")


def neutral_texts(n: int = 16) -> list[str]:
    """Neutral text for KL and statistics: the offline corpus when installed, else built-in sentences."""
    try:
        from harvesting.corpus import wiki_vital_records

        docs = [r["text"] for r in wiki_vital_records() if len(r["text"]) > 200]
        step = max(len(docs) // n, 1)
        return docs[::step][:n]
    except WorkbenchError:
        return list(NEUTRAL_TEXT)[:n]
