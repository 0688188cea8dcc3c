"""
nanochat's tokenizer, loaded safely and trained the same way.

nanochat trains a GPT-4-style byte-level BPE with the `rustbpe` package and runs it with
`tiktoken`; on disk it is `tokenizer/tokenizer.pkl`, a pickled `tiktoken.core.Encoding` whose
special tokens (`<|bos|>`, the chat markers, ...) sit after the ordinary ranks.

A pickle can execute code when loaded, so `load_tokenizer` uses an unpickler that admits
exactly one global, `tiktoken.core.Encoding`, and refuses everything else with a clear error.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import tiktoken

SPECIAL_TOKENS = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]

# nanochat's split pattern: GPT-4's, except numbers split into runs of at most two digits.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


class TokenizerError(ValueError):
    """A tokenizer file that is missing, unsafe, or does not fit the model."""


class _EncodingOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return tiktoken.core.Encoding
        raise TokenizerError(
            f"refusing to unpickle {module}.{name}: a nanochat tokenizer.pkl may only contain "
            "a tiktoken.core.Encoding"
        )


class Tokenizer:
    """A tiktoken `Encoding` with nanochat's conventions (BOS, chat rendering)."""

    def __init__(self, encoding: tiktoken.Encoding):
        missing = [t for t in SPECIAL_TOKENS if t not in encoding.special_tokens_set]
        if missing:
            raise TokenizerError(
                f"tokenizer {encoding.name!r} lacks nanochat's special tokens {missing}; "
                f"it has {sorted(encoding.special_tokens_set)}"
            )
        self.encoding = encoding
        self.bos_id = encoding.encode_single_token("<|bos|>")
        self.special_ids = {name: encoding.encode_single_token(name) for name in SPECIAL_TOKENS}
        self.special_id_set = frozenset(self.special_ids.values())

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str, prepend_bos: bool = False, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings are only recognised with `allow_special`."""
        if allow_special:
            ids = self.encoding.encode(text, allowed_special="all")
        else:
            ids = self.encoding.encode_ordinary(text)
        return [self.bos_id, *ids] if prepend_bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    @cached_property
    def token_lengths(self) -> np.ndarray:
        """The length in bytes of every token's text (special tokens included), indexed by id."""
        return np.array([len(self.encoding.decode_single_token_bytes(i)) for i in range(self.vocab_size)],
                        dtype=np.int64)

    def token_str(self, token_id: int) -> str:
        return self.encoding.decode([token_id])

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_id_set

    def render_chat(self, messages: list[dict], open_assistant_turn: bool = False) -> list[int]:
        """Token ids of a conversation in nanochat's chat format.

        `messages` alternate `{"role": "user", ...}` and `{"role": "assistant", ...}`, starting
        with the user. With `open_assistant_turn`, the ids end in `<|assistant_start|>`, ready
        for the model to write the answer.
        """
        ids = [self.bos_id]
        for i, message in enumerate(messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if message.get("role") != expected:
                raise ValueError(f"message {i} should come from {expected!r}, found {message.get('role')!r}")
            ids.append(self.special_ids[f"<|{expected}_start|>"])
            ids.extend(self.encode(message["content"]))
            ids.append(self.special_ids[f"<|{expected}_end|>"])
        if open_assistant_turn:
            ids.append(self.special_ids["<|assistant_start|>"])
        return ids

    def save(self, tokenizer_dir: str | os.PathLike) -> Path:
        """Write `tokenizer.pkl` as nanochat does (atomically)."""
        path = Path(tokenizer_dir) / "tokenizer.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pkl.tmp")
        tmp.write_bytes(pickle.dumps(self.encoding))
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        return f"Tokenizer({self.encoding.name!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load nanochat's `tokenizer.pkl` (give the file or the folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"expected a nanochat tokenizer file at {path}, found nothing there")
    data = path.read_bytes()
    try:
        encoding = _EncodingOnlyUnpickler(io.BytesIO(data)).load()
    except TokenizerError:
        raise
    except Exception as exc:
        raise TokenizerError(f"{path} is not a readable tokenizer pickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(encoding, tiktoken.Encoding):
        raise TokenizerError(f"{path} holds a {type(encoding).__name__}, expected a tiktoken.core.Encoding")
    return Tokenizer(encoding)


def train_tokenizer(texts: Iterator[str], vocab_size: int, name: str = "rustbpe") -> Tokenizer:
    """Train a BPE tokenizer exactly as nanochat does: rustbpe merges + nanochat's special tokens."""
    import rustbpe

    n_ordinary = vocab_size - len(SPECIAL_TOKENS)
    if n_ordinary < 256:
        raise ValueError(f"vocab_size must leave at least 256 byte tokens besides the specials, got {vocab_size}")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(texts, n_ordinary, pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    specials = {token: len(ranks) + i for i, token in enumerate(SPECIAL_TOKENS)}
    encoding = tiktoken.Encoding(name=name, pat_str=trainer.get_pattern(), mergeable_ranks=ranks,
                                 special_tokens=specials)
    return Tokenizer(encoding)
