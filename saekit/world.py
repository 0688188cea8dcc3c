"""
TinyWorld: an endless, seeded corpus of small English-like documents with ground-truth concepts.

Real text has no answer key: nobody can say which tokens "are about colour". TinyWorld does. Its
documents — stories, dialogue, facts, counting lists, arithmetic, calendar facts, chats in
nanochat's special-token format, a little Python — are written from a small vocabulary by
templates, and every document comes with character spans for the concepts it contains:

- lexical categories (colour, animal, bird, food, fruit, weekday, number word, ...), found by a
  lexicon lookup;
- spans (inside a quote, a question, a user or assistant turn, a code block, a list, an equation),
  recorded by the generator as it writes;
- the document's topic;
- positions (document start, sentence start, line start, sentence end).

`token_labels` maps the spans onto tokens, so concept labels travel with activations and a
feature's meaning can be measured instead of guessed. `find_concepts` labels arbitrary text (a
model's generations) with the same lexicon and rules for everything that text alone reveals.

Document `i` of seed `s` is a pure function of `(s, i)`: any document can be regenerated on its
own, and different seeds give disjoint training and held-out streams.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------- vocabulary

NAMES = ["Mia", "Tom", "Ana", "Leo", "Sam", "Zoe", "Ben", "Ella", "Noah", "Ivy"]
PRONOUNS = ["he", "she", "they", "it", "i", "we", "you", "him", "her", "them"]
MAMMALS = ["cat", "dog", "fox", "bear", "rabbit", "mouse", "horse", "cow", "sheep", "lion", "pig", "goat"]
BIRDS = ["owl", "duck", "hen", "crow", "robin", "swan"]
OTHER_ANIMALS = ["fish", "frog", "snake", "bee"]
ANIMALS = MAMMALS + BIRDS + OTHER_ANIMALS
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "pink", "purple", "orange", "brown", "grey"]
FRUITS = ["apple", "banana", "pear", "plum", "grape", "lemon", "cherry", "peach"]
OTHER_FOODS = ["bread", "cake", "soup", "rice", "cheese", "pie", "egg", "milk", "tea", "honey", "carrot", "corn"]
FOODS = FRUITS + OTHER_FOODS
PLACES = ["park", "forest", "river", "garden", "school", "market", "beach", "hill", "farm", "lake", "village",
          "kitchen"]
WEATHER = ["sunny", "rainy", "windy", "cloudy", "snowy", "foggy", "stormy", "rain", "snow", "wind", "sun"]
EMOTIONS = ["happy", "sad", "angry", "scared", "tired", "proud", "excited", "calm", "surprised", "glad"]
FAMILY = ["mother", "father", "sister", "brother", "grandma", "grandpa", "aunt", "uncle", "mum", "dad"]
SIZES = ["big", "small", "tiny", "huge", "tall", "little"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
SEASONS = ["spring", "summer", "autumn", "winter"]
TIMES_OF_DAY = ["morning", "afternoon", "evening", "night"]
MOTION_VERBS = ["walked", "ran", "jumped", "flew", "swam", "hopped", "went", "came", "climbed"]
SPEECH_VERBS = ["said", "asked", "shouted", "whispered", "replied", "called", "answered"]
CODE_KEYWORDS = ["def", "return", "for", "in", "if", "else", "while", "print", "range", "len", "True", "False", "None"]

THING_COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "banana": "yellow", "apple": "red", "night": "black",
                 "lemon": "yellow", "sea": "blue", "leaf": "green", "cherry": "red", "crow": "black", "swan": "white",
                 "pig": "pink", "plum": "purple", "carrot": "orange", "bear": "brown", "mouse": "grey", "milk": "white",
                 "frog": "green", "honey": "yellow", "corn": "yellow", "grape": "purple", "peach": "orange"}
ANIMAL_HOMES = {"fox": "forest", "bear": "forest", "owl": "forest", "fish": "river", "duck": "lake", "swan": "lake",
                "frog": "river", "cow": "farm", "sheep": "farm", "hen": "farm", "pig": "farm", "goat": "farm",
                "horse": "farm", "rabbit": "garden", "bee": "garden", "robin": "garden", "crow": "hill", "lion": "hill",
                "snake": "hill", "cat": "village", "dog": "village", "mouse": "kitchen"}
ANIMAL_MOVES = {"owl": "flew", "duck": "swam", "hen": "ran", "crow": "flew", "robin": "flew", "swan": "swam",
                "fish": "swam", "frog": "hopped", "rabbit": "hopped", "bee": "flew", "snake": "went"}
_CAN = {"flew": "fly", "swam": "swim", "hopped": "hop", "ran": "run", "went": "move"}
SEASON_WEATHER = {"spring": "rainy", "summer": "sunny", "autumn": "windy", "winter": "snowy"}

def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


_MASS_NOUNS = {"rice", "milk", "tea", "honey", "soup", "bread", "cheese", "corn"}


def _some(food: str) -> str:
    """'an apple' but 'some rice'."""
    return "some " + food if food in _MASS_NOUNS else _a(food)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _plural(word: str) -> str:
    if word in ("sheep", "fish") or word in _MASS_NOUNS:
        return word
    if word == "mouse":
        return "mice"
    if word.endswith(("ch", "sh", "x", "s")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


# --------------------------------------------------------------------------- concepts


@dataclass(frozen=True)
class Concept:
    name: str
    kind: str  # "lexical", "span", "topic" or "position"
    meaning: str


def _lexical(name: str, words: list[str], meaning: str) -> tuple[Concept, list[str]]:
    return Concept(name, "lexical", meaning), words


_LEXICAL = [
    _lexical("name", NAMES, "a character's first name (Mia, Tom, ...)"),
    _lexical("pronoun", PRONOUNS, "a personal pronoun (he, she, they, I, ...)"),
    _lexical("animal", ANIMALS, "any animal word (cat, owl, frog, ...)"),
    _lexical("bird", BIRDS, "an animal that is a bird (owl, duck, ...); a subset of animal"),
    _lexical("colour", COLOURS, "a colour word (red, blue, ...)"),
    _lexical("food", FOODS, "any food or drink (bread, tea, apple, ...)"),
    _lexical("fruit", FRUITS, "a fruit (apple, pear, ...); a subset of food"),
    _lexical("place", PLACES, "a place (park, forest, river, ...)"),
    _lexical("weather", WEATHER, "a weather word (sunny, rain, snowy, ...)"),
    _lexical("emotion", EMOTIONS, "a feeling (happy, sad, proud, ...)"),
    _lexical("family", FAMILY, "a family member (mother, brother, grandma, ...)"),
    _lexical("size", SIZES, "a size adjective (big, tiny, tall, ...)"),
    _lexical("number_word", NUMBER_WORDS, "a number written as a word (zero to twenty)"),
    _lexical("weekday", WEEKDAYS, "a day of the week"),
    _lexical("month", MONTHS, "a month of the year"),
    _lexical("season", SEASONS, "a season (spring, summer, autumn, winter)"),
    _lexical("time_of_day", TIMES_OF_DAY, "morning, afternoon, evening or night"),
    _lexical("motion_verb", MOTION_VERBS, "a verb of movement (walked, flew, swam, ...)"),
    _lexical("speech_verb", SPEECH_VERBS, "a verb of speaking (said, asked, replied, ...)"),
    _lexical("code_keyword", CODE_KEYWORDS, "a Python keyword or builtin, inside code only"),
]
_OTHER_CONCEPTS = [
    Concept("digit", "lexical", "a number written with digits (3, 12, ...)"),
    Concept("math_operator", "lexical", "an arithmetic sign: + - * ="),
    Concept("quote", "span", "inside quoted speech, quotation marks included"),
    Concept("question", "span", "inside a question, up to its question mark"),
    Concept("user_turn", "span", "the text of a user's chat message"),
    Concept("assistant_turn", "span", "the text of the assistant's chat answer"),
    Concept("code", "span", "inside Python code (a code document or a calculator call)"),
    Concept("list", "span", "inside a list of items, one per line"),
    Concept("equation", "span", "inside an arithmetic equation like 3 + 4 = 7"),
    Concept("topic_story", "topic", "any token of a story"),
    Concept("topic_dialogue", "topic", "any token of a conversation told in quotes"),
    Concept("topic_facts", "topic", "any token of a page of facts about the world"),
    Concept("topic_counting", "topic", "any token of a counting or listing exercise"),
    Concept("topic_arithmetic", "topic", "any token of an arithmetic exercise"),
    Concept("topic_calendar", "topic", "any token of a text about days, months and seasons"),
    Concept("topic_chat", "topic", "any token of a chat between a user and the assistant"),
    Concept("topic_code", "topic", "any token of a small Python program"),
    Concept("doc_start", "position", "the first token of a document (after BOS)"),
    Concept("sentence_start", "position", "the first word of a sentence (outside code)"),
    Concept("line_start", "position", "the first non-blank token of a line after a line break"),
    Concept("sentence_end", "position", "the punctuation that ends a sentence (. ! ?)"),
]
CONCEPTS: list[Concept] = [c for c, _ in _LEXICAL] + _OTHER_CONCEPTS
CONCEPT_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(CONCEPTS)}
TOPICS = [c.name.removeprefix("topic_") for c in CONCEPTS if c.kind == "topic"]

LEXICON: dict[str, tuple[str, ...]] = {}
for _concept, _words in _LEXICAL:
    for _word in _words:
        LEXICON[_word.lower()] = LEXICON.get(_word.lower(), ()) + (_concept.name,)
for _concept, _words in _LEXICAL:
    if _concept.name in ("animal", "bird", "food", "fruit", "place", "family"):
        for _word in _words:
            LEXICON.setdefault(_plural(_word), LEXICON[_word])
_CODE_ONLY = {"code_keyword"}  # "for", "in", "if" are only keywords inside code
_PROSE_ONLY = {"pronoun"}  # and "i" is only a pronoun outside it

SPECIAL_TOKEN_RE = re.compile(r"<\|[a-z_]+\|>")
_WORD_RE = re.compile(r"[A-Za-z]+")


@dataclass
class Document:
    """A TinyWorld document: its text and the character spans `(start, end, concept)` it contains."""

    text: str
    topic: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)



# --------------------------------------------------------------------------- labelling text


def find_concepts(text: str, code_spans: list[tuple[int, int]] = ()) -> list[tuple[int, int, str]]:
    """Concept spans that the text alone reveals: lexical words, numbers, signs, positions, quotes, questions.

    Used on generated documents (with their code spans, so code keywords only count in code and
    sentences are not looked for there) and on any text a model writes.
    """
    in_code = np.zeros(len(text) + 1, dtype=bool)
    for s, e in code_spans:
        in_code[s:e] = True
    spans = []
    for m in _WORD_RE.finditer(text):
        for concept in LEXICON.get(m.group().lower(), ()):
            if (concept in _CODE_ONLY) == bool(in_code[m.start()]) or concept not in _CODE_ONLY | _PROSE_ONLY:
                spans.append((m.start(), m.end(), concept))
    spans += [(m.start(), m.end(), "digit") for m in re.finditer(r"\d+", text)]
    spans += [(m.start(), m.end(), "math_operator") for m in re.finditer(r"(?<= )[-+*=](?= )", text)]
    spans += _position_spans(text, in_code)
    return spans


def _position_spans(text: str, in_code: np.ndarray) -> list[tuple[int, int, str]]:
    spans = []
    first = re.search(r"\w+|\S", SPECIAL_TOKEN_RE.sub(lambda m: " " * len(m.group()), text))
    if first:
        spans.append((first.start(), first.end(), "doc_start"))
    for m in re.finditer(r"\n[ \t]*(\S)", text):
        spans.append((m.start(1), m.start(1) + 1, "line_start"))
    # a sentence starts at the text's start, after .!? (and a closing quote), a line break, a chat marker,
    # or an opening quote
    starts = r'(?:^|(?<=[.!?])"?\s+|\n\s*|\|>|(?:^|(?<=\s))")'
    for m in re.finditer(starts + r"([A-Z][A-Za-z]*)", text):
        if not in_code[m.start(1)]:
            spans.append((m.start(1), m.end(1), "sentence_start"))
    for m in re.finditer(r'[.!?](?=["\s]|<\||$)', text):
        if not in_code[m.start()]:
            spans.append((m.start(), m.end(), "sentence_end"))
    return spans


def find_quotes_and_questions(text: str) -> list[tuple[int, int, str]]:
    """Quote spans (paired quotation marks) and question spans in free text (a model's output)."""
    spans = []
    marks = [m.start() for m in re.finditer('"', text)]
    spans += [(a, b + 1, "quote") for a, b in zip(marks[::2], marks[1::2])]
    for m in re.finditer(r"[A-Z][^.!?\"\n]*\?", text):
        spans.append((m.start(), m.end(), "question"))
    return spans


def label_text(text: str) -> list[tuple[int, int, str]]:
    """All concept spans TinyWorld's labeller can find in free text (no generator knowledge)."""
    return find_concepts(text) + find_quotes_and_questions(text)


# --------------------------------------------------------------------------- writing documents


class _Writer:
    """Appends text and records the spans of the structures written into it."""

    def __init__(self):
        self.parts: list[str] = []
        self.length = 0
        self.spans: list[tuple[int, int, str]] = []

    def add(self, text: str) -> _Writer:
        self.parts.append(text)
        self.length += len(text)
        return self

    def span(self, concept: str, text: str) -> _Writer:
        start = self.length
        self.add(text)
        self.spans.append((start, self.length, concept))
        return self

    def open(self) -> int:
        return self.length

    def close(self, concept: str, start: int) -> None:
        self.spans.append((start, self.length, concept))

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _possessive_pronoun(name: str) -> str:
    return "her" if name in ("Mia", "Ana", "Zoe", "Ella", "Ivy") else "his"


def _subject_pronoun(name: str) -> str:
    return "she" if _possessive_pronoun(name) == "her" else "he"


def _quote_sentence(r: random.Random) -> str:
    templates = [
        lambda: f"I like the {r.choice(COLOURS)} {r.choice(ANIMALS)}.",
        lambda: f"Let us go to the {r.choice(PLACES)}!",
        lambda: f"Where is my {r.choice(FOODS)}?",
        lambda: f"I feel {r.choice(EMOTIONS)} today.",
        lambda: f"Look at the {r.choice(SIZES)} {r.choice(ANIMALS)}!",
        lambda: f"It is {r.choice(WEATHER[:7])} today.",
        lambda: f"Can we eat some {_plural(r.choice(FRUITS))}?",
        lambda: f"My {r.choice(FAMILY)} is at the {r.choice(PLACES)}.",
        lambda: f"I saw {NUMBER_WORDS[r.randint(2, 9)]} {_plural(r.choice(ANIMALS))}.",
        lambda: f"Today is {r.choice(WEEKDAYS)}.",
        lambda: f"What colour is the {r.choice(list(THING_COLOURS))}?",
    ]
    return r.choice(templates)()


def _write_quote(w: _Writer, r: random.Random, speaker: str, end: str = " ") -> None:
    sentence = _quote_sentence(r)
    verb = "asked" if sentence.endswith("?") else r.choice([v for v in SPEECH_VERBS if v != "asked"])
    if r.random() < 0.5:
        w.add(f"{speaker} {verb}, ")
        _quoted(w, sentence)
        w.add(end)
    else:
        if sentence.endswith("."):
            _quoted(w, sentence[:-1] + ",")
        else:
            _quoted(w, sentence)
        w.add(f" {verb} {speaker}.{end}")


def _quoted(w: _Writer, sentence: str) -> None:
    start = w.open()
    w.add('"')
    if sentence.endswith("?"):
        w.span("question", sentence)
    else:
        w.add(sentence)
    w.add('"')
    w.close("quote", start)


def _thing_colour(thing: str) -> str:
    return f"The {thing} is {THING_COLOURS[thing]}."


def _animal_home(animal: str) -> str:
    return f"{_cap(_a(animal))} lives in the {ANIMAL_HOMES[animal]}."


def _animal_can(animal: str) -> str:
    return f"{_cap(_a(animal))} can {_CAN[ANIMAL_MOVES.get(animal, 'ran')]}."


def _animal_goes_home(animal: str) -> str:
    return f"The {animal} {ANIMAL_MOVES.get(animal, 'ran')} to the {ANIMAL_HOMES[animal]}. "


def _story(w: _Writer, r: random.Random) -> None:
    hero, friend = r.sample(NAMES, 2)
    animal, place, colour = r.choice(ANIMALS), r.choice(PLACES), r.choice(COLOURS)
    he, his = _subject_pronoun(hero), _possessive_pronoun(hero)
    opening = r.choice([
        f"Once upon a time, there was a {r.choice(SIZES)} {animal} called {hero}. ",
        f"{hero} lived near the {place} with {his} {r.choice(FAMILY)}. ",
        f"One {r.choice(WEATHER[:7])} {r.choice(TIMES_OF_DAY)}, {hero} went to the {place}. ",
        f"On {r.choice(WEEKDAYS)}, {hero} and {friend} played in the {place}. ",
    ])
    w.add(opening)
    middles = [
        lambda: f"{_cap(he)} saw {_a(r.choice(COLOURS))} {r.choice(ANIMALS)} near the {r.choice(PLACES)}. ",
        lambda: f"The weather was {r.choice(WEATHER[:7])}, so {he} felt {r.choice(EMOTIONS)}. ",
        lambda: f"{hero} ate {_some(r.choice([f for f in OTHER_FOODS if f not in ('milk', 'tea')]))} and some "
                f"{_plural(r.choice(FRUITS))}. ",
        lambda: f"Then {hero} {r.choice(MOTION_VERBS[:4] + ['walked'])} to the {r.choice(PLACES)}. ",
        lambda: f"In the {r.choice(TIMES_OF_DAY)}, {friend} came to visit with {_some(r.choice(FOODS))}. ",
        lambda: f"{hero} had {NUMBER_WORDS[r.randint(2, 9)]} {colour} {_plural(r.choice(ANIMALS))}. ",
        lambda: f"Every {r.choice(WEEKDAYS)}, {hero} helped {his} {r.choice(FAMILY)} at the {r.choice(PLACES)}. ",
        lambda: _animal_goes_home(r.choice(list(ANIMAL_HOMES))),
        lambda: f"It was {r.choice(SEASONS)}, and the {r.choice(PLACES)} was {r.choice(WEATHER[:7])}. ",
        lambda: f"{hero} felt {r.choice(EMOTIONS)} because {his} {r.choice(FAMILY)} was {r.choice(EMOTIONS)}. ",
    ]
    for _ in range(r.randint(3, 6)):
        if r.random() < 0.3:
            _write_quote(w, r, r.choice([hero, friend]))
        else:
            w.add(r.choice(middles)())
    w.add(r.choice(["The end.", f"{hero} was {r.choice(EMOTIONS)}.", f"That night, {hero} slept well."]))


def _dialogue(w: _Writer, r: random.Random) -> None:
    a, b = r.sample(NAMES, 2)
    w.add(f"{a} and {b} met at the {r.choice(PLACES)}.\n")
    _quoted(w, f"Hello, {b}!")
    w.add(f" said {a}. ")
    _quoted(w, "How are you?")
    w.add("\n")
    speakers = [b, a]
    for turn in range(r.randint(2, 5)):
        speaker = speakers[turn % 2]
        kind = r.random()
        if kind < 0.35:
            thing = r.choice(list(THING_COLOURS))
            _quoted(w, f"What colour is the {thing}?")
            w.add(f" asked {speaker}.\n")
            other = speakers[(turn + 1) % 2]
            _quoted(w, f"The {thing} is {THING_COLOURS[thing]},")
            w.add(f" {r.choice(['said', 'replied', 'answered'])} {other}.\n")
        elif kind < 0.55:
            _quoted(w, f"I feel {r.choice(EMOTIONS)} today,")
            w.add(f" said {speaker}.\n")
        else:
            _write_quote(w, r, speaker, end="\n")
    _quoted(w, f"Goodbye, {speakers[0]}!")
    w.add(f" said {speakers[1]}.")


def _facts(w: _Writer, r: random.Random) -> None:
    facts = [
        lambda: _thing_colour(r.choice(list(THING_COLOURS))),
        lambda: _animal_home(r.choice(list(ANIMAL_HOMES))),
        lambda: f"{_cap(_a(r.choice(BIRDS)))} is a bird.",
        lambda: f"{_cap(_a(r.choice(MAMMALS + OTHER_ANIMALS)))} is an animal.",
        lambda: f"{_cap(_a(r.choice(FRUITS)))} is a fruit.",
        lambda: f"{_cap(r.choice(OTHER_FOODS))} is a food.",
        lambda: f"In {(season := r.choice(SEASONS))}, it is often {SEASON_WEATHER[season]}.",
        lambda: _animal_can(r.choice(ANIMALS)),
        lambda: "There are seven days in a week and twelve months in a year.",
    ]
    w.add(r.choice(["Here are some facts.", "Facts about the world.", "Let us learn."]) + "\n")
    for fact in r.sample(facts, r.randint(4, 7)):
        w.add(fact() + " ")
    w.add("Now you know!")


def _counting(w: _Writer, r: random.Random) -> None:
    hero = r.choice(NAMES)
    kind = r.random()
    if kind < 0.4:
        thing = r.choice(FRUITS + ANIMALS)
        n = r.randint(2, 7)
        w.add(f"{hero} counts the {_plural(thing)}.\n")
        start = w.open()
        for i in range(1, n + 1):
            w.add(f"{i}) {NUMBER_WORDS[i]} {thing if i == 1 else _plural(thing)}\n")
        w.close("list", start)
        w.add(f"{hero} has {NUMBER_WORDS[n]} {_plural(thing)}.")
    elif kind < 0.75:
        category, words = r.choice([("animals", ANIMALS), ("colours", COLOURS), ("foods", FOODS), ("places", PLACES),
                                    ("birds", BIRDS), ("fruits", FRUITS)])
        w.add(f"Here is a list of {category}:\n")
        start = w.open()
        for word in r.sample(words, r.randint(3, 6)):
            w.add(f"- {word}\n")
        w.close("list", start)
        w.add(f"That is the list of {category}.")
    else:
        start = r.randint(0, 10)
        n = r.randint(4, 8)
        w.add(f"{hero} can count. ")
        words = [NUMBER_WORDS[i] for i in range(start, min(start + n, 21))]
        w.add(", ".join([_cap(words[0])] + words[1:]))
        w.add(f". Then {hero} counts with digits: ")
        w.add(", ".join(str(i) for i in range(start, start + n)) + ".")


def _equation(w: _Writer, a: int, op: str, b: int) -> None:
    result = a + b if op == "+" else a - b if op == "-" else a * b
    w.span("equation", f"{a} {op} {b} = {result}")


def _arithmetic(w: _Writer, r: random.Random) -> None:
    w.add(r.choice(["Let us add numbers.", "Time for some sums.", "Practice your maths."]) + "\n")
    for _ in range(r.randint(3, 7)):
        kind = r.random()
        if kind < 0.6:
            _equation(w, r.randint(0, 9), "+", r.randint(0, 9))
            w.add("\n")
        elif kind < 0.75:
            a = r.randint(1, 9)
            _equation(w, a, "-", r.randint(0, a))
            w.add("\n")
        elif kind < 0.88:
            a, b = r.randint(0, 9), r.randint(0, 9)
            if a + b <= 20:
                w.add(f"{_cap(NUMBER_WORDS[a])} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}.\n")
        else:
            name, thing = r.choice(NAMES), r.choice(FRUITS)
            a, b = r.randint(1, 9), r.randint(1, 9)
            he = _subject_pronoun(name)
            w.add(f"{name} has {a} {_plural(thing)} and gets {b} more, so {he} has {a + b} {_plural(thing)}.\n")
    w.add("Well done!")


def _calendar(w: _Writer, r: random.Random) -> None:
    sentences = [
        lambda i: f"After {WEEKDAYS[i % 7]} comes {WEEKDAYS[(i + 1) % 7]}.",
        lambda i: f"The day before {WEEKDAYS[(i + 1) % 7]} is {WEEKDAYS[i % 7]}.",
        lambda i: f"Today is {WEEKDAYS[i % 7]}, so tomorrow is {WEEKDAYS[(i + 1) % 7]}.",
        lambda i: f"After {MONTHS[i % 12]} comes {MONTHS[(i + 1) % 12]}.",
        lambda i: f"{MONTHS[i % 12]} is month number {i % 12 + 1}.",
        lambda i: (lambda s: f"In {s}, the weather is {SEASON_WEATHER[s]}.")(SEASONS[i % 4]),
        lambda i: "There are seven days in a week.",
        lambda i: f"{WEEKDAYS[i % 7]} is day {i % 7 + 1} of the week.",
    ]
    w.add(r.choice(["The calendar.", "Days and months.", "Let us learn the days."]) + "\n")
    for _ in range(r.randint(4, 8)):
        w.add(r.choice(sentences)(r.randint(0, 83)) + " ")
    w.add("That is the calendar.")


CHAT_CATEGORIES = {"colour": COLOURS, "animal": ANIMALS, "bird": BIRDS, "food": FOODS, "fruit": FRUITS,
                   "place": PLACES, "weekday": WEEKDAYS, "month": MONTHS, "season": SEASONS, "emotion": EMOTIONS}
_CATEGORY_NOUN = {"weekday": "day of the week", "emotion": "feeling"}


def chat_category_question(r: random.Random, category: str) -> str:
    noun = _CATEGORY_NOUN.get(category, category)
    return r.choice([f"Name {_a(noun)}.", f"Tell me {_a(noun)}.", f"Can you name {_a(noun)}?",
                     f"What is your favourite {noun}?", f"Give me {_a(noun)}, please."])


def _chat_exchange(r: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """One user question and the assistant's answer, as (question, answer parts [(kind, text)])."""
    kind = r.random()
    if kind < 0.35:
        category = r.choice(list(CHAT_CATEGORIES))
        word = r.choice(CHAT_CATEGORIES[category])
        noun = _CATEGORY_NOUN.get(category, category)
        question = chat_category_question(r, category)
        if "favourite" in question:
            answer = f"My favourite {noun} is {word}."
        else:
            answer = r.choice([f"{_cap(word)}.", f"Sure! {_cap(word)}.", f"Here is one: {word}."])
        return question, [("text", answer)]
    if kind < 0.5:
        thing = r.choice(list(THING_COLOURS))
        return f"What colour is the {thing}?", [("text", _thing_colour(thing))]
    if kind < 0.65:
        a, b = r.randint(0, 9), r.randint(0, 9)
        question = f"What is {a} plus {b}?"
        if r.random() < 0.3:
            return question, [("text", "Let me use the calculator. "), ("python", f"{a} + {b}"),
                              ("output", str(a + b)), ("text", f" The answer is {a + b}.")]
        return question, [("text", f"{a} + {b} = {a + b}.")]
    if kind < 0.75:
        i = r.randint(0, 6)
        return f"What day comes after {WEEKDAYS[i]}?", [("text", f"After {WEEKDAYS[i]} comes {WEEKDAYS[(i + 1) % 7]}.")]
    if kind < 0.85:
        animal = r.choice(list(ANIMAL_HOMES))
        return f"Where does {_a(animal)} live?", [("text", _animal_home(animal))]
    if kind < 0.93:
        return "How do you feel?", [("text", f"I feel {r.choice(EMOTIONS)}, thank you!")]
    hero, animal = r.choice(NAMES), r.choice(ANIMALS)
    return "Tell me a short story.", [("text", f"{hero} had {_a(animal)}. One {r.choice(TIMES_OF_DAY)}, the {animal} "
                                                f"went to the {r.choice(PLACES)}. {hero} was {r.choice(EMOTIONS)}.")]


def _chat(w: _Writer, r: random.Random) -> None:
    for _ in range(r.randint(1, 3)):
        question, parts = _chat_exchange(r)
        w.add("<|user_start|>")
        start = w.open()
        if question.endswith("?"):
            w.span("question", question)
        else:
            w.add(question)
        w.close("user_turn", start)
        w.add("<|user_end|><|assistant_start|>")
        start = w.open()
        for part, text in parts:
            if part == "python":
                w.add("<|python_start|>").span("code", text).add("<|python_end|>")
            elif part == "output":
                w.add("<|output_start|>" + text + "<|output_end|>")
            else:
                w.add(text)
        w.close("assistant_turn", start)
        w.add("<|assistant_end|>")


def _python_list(name: str, words: list[str]) -> str:
    return f"{name} = [" + ", ".join(f'"{word}"' for word in words) + "]\n"


_PROGRAMS = [
    lambda r: f"def add(a, b):\n    return a + b\n\nprint(add({r.randint(0, 9)}, {r.randint(0, 9)}))\n",
    lambda r: _python_list("colours", r.sample(COLOURS, 3)) + "for colour in colours:\n    print(colour)\n",
    lambda r: f"total = 0\nfor i in range({r.randint(2, 9)}):\n    total = total + i\nprint(total)\n",
    lambda r: _python_list("animals", r.sample(ANIMALS, 3)) + "print(len(animals))\n",
    lambda r: f"def is_big(n):\n    if n > {r.randint(1, 9)}:\n        return True\n    else:\n        return False\n",
    lambda r: (_python_list("days", WEEKDAYS[:3]) + "for day in days:\n"
               + f'    if day == "{r.choice(WEEKDAYS[:3])}":\n        print(day)\n'),
    lambda r: f"count = {r.randint(1, 9)}\nwhile count > 0:\n    count = count - 1\nprint(count)\n",
]


def _code(w: _Writer, r: random.Random) -> None:
    w.add(r.choice(["A small program.", "Here is some Python code.", "Let us write code."]) + "\n")
    for i in range(r.randint(1, 2)):
        w.add("\n" if i else "")
        w.span("code", r.choice(_PROGRAMS)(r))
    w.add("The program is done.")


_GENERATORS = {"story": _story, "dialogue": _dialogue, "facts": _facts, "counting": _counting,
               "arithmetic": _arithmetic, "calendar": _calendar, "chat": _chat, "code": _code}
TOPIC_WEIGHTS = {"story": 0.2, "dialogue": 0.12, "facts": 0.1, "counting": 0.1, "arithmetic": 0.12, "calendar": 0.1,
                 "chat": 0.18, "code": 0.08}


class TinyWorld:
    """The document stream of one seed. `world.document(i)` is deterministic; `iter(world)` is endless."""

    def __init__(self, seed: int = 0, topics: dict[str, float] | None = None):
        self.seed = seed
        self.topics = dict(TOPIC_WEIGHTS if topics is None else topics)
        unknown = set(self.topics) - set(_GENERATORS)
        if unknown or not self.topics:
            raise ValueError(f"topics must be a non-empty subset of {list(_GENERATORS)}, found {sorted(self.topics)}")

    def document(self, index: int) -> Document:
        r = random.Random(f"tinyworld:{self.seed}:{index}")
        topic = r.choices(list(self.topics), weights=list(self.topics.values()))[0]
        w = _Writer()
        _GENERATORS[topic](w, r)
        text = w.text
        code = [(s, e) for s, e, c in w.spans if c == "code"]
        spans = w.spans + [(0, len(text), f"topic_{topic}")] + find_concepts(text, code)
        return Document(text, topic, sorted(spans))

    def documents(self, start: int = 0) -> Iterator[Document]:
        index = start
        while True:
            yield self.document(index)
            index += 1

    def __iter__(self) -> Iterator[Document]:
        return self.documents()

    def texts(self, n: int, start: int = 0) -> list[str]:
        return [self.document(i).text for i in range(start, start + n)]


def token_labels(doc: Document, tokenizer, prepend_bos: bool = True) -> tuple[list[int], np.ndarray]:
    """Token ids of a document and a bool matrix [n_tokens, n_concepts] of the concepts each token touches.

    A token carries a concept when its characters overlap the concept's span; BOS carries none.
    """
    ids = tokenizer.encode(doc.text, allow_special=True)
    if doc.text.isascii():  # one byte per character: offsets are cumulative token lengths
        ends = np.cumsum(tokenizer.token_lengths[ids])
        starts = ends - tokenizer.token_lengths[ids]
    else:
        starts = np.asarray(tokenizer.encoding.decode_with_offsets(ids)[1], dtype=np.int64)
        ends = np.append(starts[1:], len(doc.text))
    spans = np.array([(s, e, CONCEPT_INDEX[c]) for s, e, c in doc.spans], dtype=np.int64).reshape(-1, 3)
    first = np.searchsorted(ends, spans[:, 0], side="right")  # the first token ending after the span starts
    last = np.searchsorted(starts, spans[:, 1], side="left")  # one past the last token starting before it ends
    # mark [first, last) for each span's concept with +1/-1 at the edges, then count open spans per token
    edges = np.zeros((len(ids) + 1, len(CONCEPTS)), dtype=np.int32)
    np.add.at(edges, (first, spans[:, 2]), 1)
    np.add.at(edges, (last, spans[:, 2]), -1)
    labels = np.cumsum(edges[:-1], axis=0) > 0
    if prepend_bos:
        ids = [tokenizer.bos_id, *ids]
        labels = np.concatenate([np.zeros((1, len(CONCEPTS)), dtype=bool), labels])
    return ids, labels


def concept_frequencies(tokenizer, n_docs: int = 2000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """For each concept: (share of non-special tokens that carry it, share of documents that contain it)."""
    world = TinyWorld(seed)
    token_counts = np.zeros(len(CONCEPTS))
    doc_counts = np.zeros(len(CONCEPTS))
    n_tokens = 0
    for i in range(n_docs):
        ids, labels = token_labels(world.document(i), tokenizer, prepend_bos=False)
        ordinary = labels[[not tokenizer.is_special(t) for t in ids]]
        token_counts += ordinary.sum(axis=0)
        doc_counts += ordinary.any(axis=0)
        n_tokens += len(ordinary)
    return {c.name: (token_counts[i] / n_tokens, doc_counts[i] / n_docs) for i, c in enumerate(CONCEPTS)}


def concept_table(tokenizer, n_docs: int = 2000, seed: int = 0) -> str:
    """TinyWorld's concepts as a Markdown table: name, kind, meaning and how often each occurs."""
    freqs = concept_frequencies(tokenizer, n_docs, seed)
    lines = ["| concept | kind | meaning | tokens | documents |", "| --- | --- | --- | ---: | ---: |"]
    for c in CONCEPTS:
        tokens, docs = freqs[c.name]
        lines.append(f"| `{c.name}` | {c.kind} | {c.meaning} | {tokens:.2%} | {docs:.1%} |")
    return "\n".join(lines) + "\n"
