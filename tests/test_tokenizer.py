"""nanochat's tokenizer: safe loading, chat rendering, deterministic training."""

from pathlib import Path

import pytest

from saekit.tokenizer import SPECIAL_TOKENS, TokenizerError, load_tokenizer, train_tokenizer
from saekit.world import TinyWorld

FIXTURE_TOKENIZER = Path(__file__).parent / "fixtures/nanochat/current-2026-07/tokenizer"


def test_fixture_tokenizer_has_nanochats_special_tokens():
    tok = load_tokenizer(FIXTURE_TOKENIZER)
    assert tok.vocab_size == 512 and tok.bos_id == 503
    assert [tok.special_ids[t] for t in SPECIAL_TOKENS] == list(range(503, 512))
    assert tok.encode("hi", prepend_bos=True)[0] == 503
    assert tok.is_special(503) and not tok.is_special(tok.encode("a")[0])


def test_special_token_text_is_ordinary_unless_allowed():
    tok = load_tokenizer(FIXTURE_TOKENIZER)
    assert tok.encode("<|bos|>", allow_special=True) == [tok.bos_id]
    assert tok.bos_id not in tok.encode("<|bos|>")


def test_render_chat_follows_nanochats_format():
    tok = load_tokenizer(FIXTURE_TOKENIZER)
    ids = tok.render_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    s = tok.special_ids
    assert ids == [tok.bos_id, s["<|user_start|>"], *tok.encode("Hi"), s["<|user_end|>"],
                   s["<|assistant_start|>"], *tok.encode("Hello"), s["<|assistant_end|>"]]
    open_turn = tok.render_chat([{"role": "user", "content": "Hi"}], open_assistant_turn=True)
    assert open_turn[-1] == s["<|assistant_start|>"]
    with pytest.raises(ValueError, match="message 0 should come from 'user', found 'assistant'"):
        tok.render_chat([{"role": "assistant", "content": "Hi"}])


def test_training_is_deterministic_and_round_trips(tmp_path):
    texts = TinyWorld(0).texts(500)
    a = train_tokenizer(iter(texts), 400)
    b = train_tokenizer(iter(texts), 400)
    assert a.vocab_size == 400 and a.encoding._mergeable_ranks == b.encoding._mergeable_ranks
    path = a.save(tmp_path / "tokenizer")
    again = load_tokenizer(path)
    sample = texts[3]
    assert again.encode(sample, allow_special=True) == a.encode(sample, allow_special=True)
    assert again.decode(a.encode(sample, allow_special=True)) == sample
    with pytest.raises(ValueError, match="at least 256 byte tokens"):
        train_tokenizer(iter(texts), 200)


def test_missing_and_garbage_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a nanochat tokenizer file"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(TokenizerError, match="not a readable tokenizer pickle"):
        load_tokenizer(tmp_path)
