"""
Capability probes: has a model really learned TinyWorld?

A model that only learned word frequencies would still produce plausible-looking text, and its
features would be shallow. These probes ask for facts and structure with greedy decoding on
prompts built from held-out documents (a TinyWorld seed never used in training):

- `weekday`: "After Monday comes" -> " Tuesday";
- `addition`: "3 + 4 =" -> " 7", for every pair of single digits;
- `close_quote`: an open quotation, cut mid-sentence, must be closed within a few tokens;
- `chat_category`: "Name a fruit." answered, in nanochat's chat format, with a fruit.
"""

from __future__ import annotations

import random

import torch

from saekit.nanochat import GPT, generate
from saekit.tokenizer import Tokenizer
from saekit.world import CHAT_CATEGORIES, WEEKDAYS, TinyWorld, chat_category_question, find_concepts

HELD_OUT_SEED = 1_000_003


def _held_out_prefix(world: TinyWorld, r: random.Random, topic: str, max_sentences: int) -> str:
    """The opening sentences of a held-out document of `topic` (prose only, no chat markup)."""
    while True:
        doc = world.document(r.randrange(10**9))
        if doc.topic == topic:
            break
    sentences = doc.text.replace("\n", " \n").split(". ")
    return ". ".join(sentences[: r.randint(1, max_sentences)]).rstrip() + ". "


def weekday_prompts(r: random.Random, world: TinyWorld, n: int) -> list[tuple[str, str]]:
    prompts = []
    for i in range(n):
        day = i % 7
        prefix = _held_out_prefix(world, r, "calendar", 2) if r.random() < 0.7 else ""
        prompts.append((prefix + f"After {WEEKDAYS[day]} comes", f" {WEEKDAYS[(day + 1) % 7]}"))
    return prompts


def addition_prompts(r: random.Random, world: TinyWorld) -> list[tuple[str, str]]:
    prompts = []
    for a in range(10):
        for b in range(10):
            header = r.choice(["Let us add numbers.\n", "Time for some sums.\n", "Practice your maths.\n"])
            warmup = "".join(f"{x} + {y} = {x + y}\n" for x, y in [(r.randint(0, 9), r.randint(0, 9))
                                                                      for _ in range(r.randint(0, 2))])
            prompts.append((header + warmup + f"{a} + {b} =", f" {a + b}"))
    return prompts


def quote_prompts(r: random.Random, world: TinyWorld, n: int) -> list[str]:
    """Stories cut inside an open quotation."""
    prompts = []
    while len(prompts) < n:
        doc = world.document(r.randrange(10**9))
        quotes = [(s, e) for s, e, c in doc.spans if c == "quote"]
        if doc.topic not in ("story", "dialogue") or not quotes:
            continue
        s, e = r.choice(quotes)
        inside = doc.text[s:e - 1]  # drop the closing mark
        words = inside.split(" ")
        cut = r.randint(1, max(1, len(words) - 1))
        prompts.append(doc.text[:s] + " ".join(words[:cut]))
    return prompts


def chat_prompts(r: random.Random, n: int) -> list[tuple[list[dict], str]]:
    categories = list(CHAT_CATEGORIES)
    return [([{"role": "user", "content": chat_category_question(r, categories[i % len(categories)])}],
             categories[i % len(categories)]) for i in range(n)]


def _complete(model: GPT, ids: list[int], max_tokens: int, stop: set[int] | None = None) -> list[int]:
    return list(generate(model, ids, max_tokens, temperature=0.0, stop_tokens=stop))


@torch.no_grad()
def run_probes(model: GPT, tokenizer: Tokenizer, n: int = 70, seed: int = 0) -> dict[str, dict]:
    """Accuracy of each probe (greedy decoding on held-out prompts) with a few failures to read."""
    r = random.Random(f"probes:{seed}")
    world = TinyWorld(HELD_OUT_SEED + seed)
    results: dict[str, dict] = {}

    def record(name: str, outcomes: list[tuple[bool, str]]) -> None:
        results[name] = {"accuracy": sum(ok for ok, _ in outcomes) / len(outcomes), "n": len(outcomes),
                         "failures": [text for ok, text in outcomes if not ok][:5]}

    def continuation_check(prompts: list[tuple[str, str]], max_tokens: int) -> list[tuple[bool, str]]:
        outcomes = []
        for prompt, expected in prompts:
            out = tokenizer.decode(_complete(model, tokenizer.encode(prompt, prepend_bos=True), max_tokens))
            ok = out.startswith(expected) and not out[len(expected):len(expected) + 1].isalnum()
            outcomes.append((ok, prompt[-40:] + " |" + out))
        return outcomes

    record("weekday", continuation_check(weekday_prompts(r, world, n), 3))
    record("addition", continuation_check(addition_prompts(r, world), 3))

    outcomes = []
    for prompt in quote_prompts(r, world, n):
        out = tokenizer.decode(_complete(model, tokenizer.encode(prompt, prepend_bos=True), 10))
        closed = '"' in out and "\n" not in out.split('"')[0]
        outcomes.append((closed, prompt[-40:] + " |" + out))
    record("close_quote", outcomes)

    outcomes = []
    end = tokenizer.special_ids["<|assistant_end|>"]
    for messages, category in chat_prompts(r, n):
        ids = tokenizer.render_chat(messages, open_assistant_turn=True)
        answer = tokenizer.decode([t for t in _complete(model, ids, 16, stop={end}) if not tokenizer.is_special(t)])
        found = {c for s, e, c in find_concepts(answer)}
        outcomes.append((category in found, f"{messages[0]['content']} |{answer}"))
    record("chat_category", outcomes)
    return results
