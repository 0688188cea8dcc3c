"""TinyWorld: deterministic documents whose concept labels are right, down to the token."""

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from saekit.data import pack_rows, tinyworld_docs
from saekit.tokenizer import train_tokenizer
from saekit.world import (
    COLOURS,
    CONCEPT_INDEX,
    CONCEPTS,
    TOPICS,
    WEEKDAYS,
    TinyWorld,
    concept_table,
    label_text,
    token_labels,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iter(TinyWorld(0).texts(3000)), 700)


@pytest.fixture(scope="module")
def sample_docs():
    world = TinyWorld(0)
    return [world.document(i) for i in range(600)]


def test_documents_are_a_pure_function_of_seed_and_index():
    a, b = TinyWorld(0), TinyWorld(0)
    assert a.document(123) == b.document(123)
    stream = a.documents(start=10)
    assert [next(stream).text for _ in range(3)] == [b.document(i).text for i in range(10, 13)]
    assert TinyWorld(1).texts(20) != a.texts(20)


def test_at_least_thirty_concepts_of_four_kinds():
    kinds = Counter(c.kind for c in CONCEPTS)
    assert len(CONCEPTS) >= 30
    assert set(kinds) == {"lexical", "span", "topic", "position"}
    assert {"quote", "user_turn", "assistant_turn", "code", "list"} <= {c.name for c in CONCEPTS if c.kind == "span"}
    assert len({c.name for c in CONCEPTS}) == len(CONCEPTS)


def test_every_concept_and_topic_occurs(sample_docs):
    seen = {c for d in sample_docs for _, _, c in d.spans}
    assert seen == set(CONCEPT_INDEX)
    assert {d.topic for d in sample_docs} == set(TOPICS)
    assert all(d.text.isascii() for d in sample_docs)


def test_spans_cover_what_they_claim(sample_docs):
    for doc in sample_docs:
        for s, e, concept in doc.spans:
            assert 0 <= s < e <= len(doc.text)
            piece = doc.text[s:e]
            if concept == "colour":
                assert piece.lower() in COLOURS
            elif concept == "quote":
                assert piece[0] == '"' and piece[-1] == '"'
            elif concept == "question":
                assert piece.endswith("?")
            elif concept == "equation":
                a, op, b, eq, result = piece.split()
                assert eq == "=" and eval(f"{a} {op} {b}") == int(result)
            elif concept in ("user_turn", "assistant_turn"):
                assert doc.text[s - 2:s] == "|>" and doc.text[e:e + 2] == "<|" and piece[0] != "<"
            elif concept == "code_keyword":
                assert any(cs <= s and e <= ce for cs, ce, c in doc.spans if c == "code")


def test_arithmetic_and_calendar_facts_are_true():
    world = TinyWorld(3)
    for i in range(300):
        text = world.document(i).text
        for day, nxt in re.findall(r"After (\w+day) comes (\w+day)", text):
            assert WEEKDAYS[(WEEKDAYS.index(day) + 1) % 7] == nxt
        for a, b, total in re.findall(r"(\d) \+ (\d) = (\d+)", text):
            assert int(a) + int(b) == int(total)


def test_token_labels_follow_the_spans(tokenizer, sample_docs):
    colour = CONCEPT_INDEX["colour"]
    quote = CONCEPT_INDEX["quote"]
    for doc in sample_docs[:200]:
        ids, labels = token_labels(doc, tokenizer)
        assert ids[0] == tokenizer.bos_id and not labels[0].any()
        assert labels.shape == (len(ids), len(CONCEPTS))
        topic = CONCEPT_INDEX[f"topic_{doc.topic}"]
        assert labels[1:, topic].all()
        for t, token_id in enumerate(ids):
            text = tokenizer.token_str(token_id).strip().lower()
            if text in COLOURS and not tokenizer.is_special(token_id):
                assert labels[t, colour], (doc.text, text)
            if '"' in text and doc.topic in ("story", "dialogue"):
                assert labels[t, quote]
        words = [tokenizer.token_str(i).strip() for i, lab in zip(ids, labels) if lab[colour]]
        assert all(w and any(w.lower() in c or c.startswith(w.lower()) for c in COLOURS) for w in words), words


def test_chat_documents_use_nanochats_special_tokens(tokenizer, sample_docs):
    chat = next(d for d in sample_docs if d.topic == "chat")
    ids, labels = token_labels(chat, tokenizer)
    s = tokenizer.special_ids
    assert ids[1] == s["<|user_start|>"] and ids[-1] == s["<|assistant_end|>"]
    user = CONCEPT_INDEX["user_turn"]
    inside = [t for t, i in enumerate(ids) if labels[t, user]]
    assert inside and all(not tokenizer.is_special(ids[t]) for t in inside)
    assert not labels[[tokenizer.is_special(i) for i in ids]][:, user].any()


def test_label_text_on_free_text():
    text = 'Mia saw a red owl. She said, "Where is my cake?" On Monday it was sunny.'
    found = {(text[s:e], c) for s, e, c in label_text(text)}
    assert {("red", "colour"), ("owl", "animal"), ("owl", "bird"), ("cake", "food"), ("Monday", "weekday"),
            ("sunny", "weather"), ("Mia", "name"), ("She", "sentence_start"), ("Mia", "doc_start")} <= found
    assert ('"Where is my cake?"', "quote") in found and ("Where is my cake?", "question") in found
    assert ("for", "code_keyword") not in {(text[s:e], c) for s, e, c in label_text("We wait for you.")}


def test_packing_keeps_labels_aligned_and_rows_start_with_bos(tokenizer):
    rows = pack_rows(tinyworld_docs(tokenizer, seed=0), 129)
    world = TinyWorld(0)
    for _ in range(20):
        row = next(rows)
        assert len(row.ids) == 129 and row.ids[0] == tokenizer.bos_id
        assert row.extras["labels"].shape == (129, len(CONCEPTS))
        for t in range(129):  # every token and label is the one its document gave it
            ids, labels = token_labels(world.document(int(row.extras["doc"][t])), tokenizer)
            pos = int(row.extras["pos"][t])
            assert ids[pos] == row.ids[t] and np.array_equal(labels[pos], row.extras["labels"][t])


def test_concept_table_documents_every_concept(tokenizer):
    table = concept_table(tokenizer, n_docs=50)
    for c in CONCEPTS:
        assert f"| `{c.name}` | {c.kind} | {c.meaning} |" in table


def test_committed_concept_doc_is_current():
    from saekit import load_model
    _, tok = load_model()
    doc = (Path(__file__).parents[1] / "docs" / "concepts.md").read_text()
    assert concept_table(tok) in doc
