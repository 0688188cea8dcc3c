"""
Text sources into token rows, packed the way nanochat packs its pretraining data.

Sources: TinyWorld (with its concept labels), plain-text files (documents separated by a blank
line), jsonl files (one document per line, under a field, `text` by default) and nanochat's parquet
shards (a `text` column; needs the optional `pyarrow`). `text_source("tinyworld:3")`,
`text_source("~/.cache/nanochat/base_data")` and the like build one from a string.

nanochat's loader ("BOS-aligned best-fit") prepends BOS to every document and fills each row of
`T + 1` tokens with the largest buffered documents that still fit; when none fits, it crops the
shortest one to fill the row exactly. Every row therefore starts with BOS, nothing is padded, and
every token can attend back to the start of its document. saekit packs the same way, and carries
per-token arrays (TinyWorld's concept labels, document ids, positions) through the packing so
they stay aligned with the tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from saekit.tokenizer import Tokenizer
from saekit.world import TinyWorld, token_labels


@dataclass
class TokenDoc:
    """One tokenized document: ids (BOS first) and optional per-token arrays of the same length."""

    ids: np.ndarray
    extras: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def crop(self, n: int) -> TokenDoc:
        return TokenDoc(self.ids[:n], {k: v[:n] for k, v in self.extras.items()})


def pack_rows(docs: Iterator[TokenDoc], row_len: int, buffer_size: int = 64) -> Iterator[TokenDoc]:
    """Pack documents into rows of exactly `row_len` tokens with nanochat's BOS-aligned best fit."""
    if row_len < 2:
        raise ValueError(f"row_len must be at least 2, got {row_len}")
    buffer: list[TokenDoc] = []
    lengths: list[int] = []  # len() of each buffered document
    docs = iter(docs)
    exhausted = False
    while True:
        pieces, filled = [], 0
        while filled < row_len:
            while not exhausted and len(buffer) < buffer_size:
                doc = next(docs, None)
                if doc is None:
                    exhausted = True
                elif len(doc):
                    buffer.append(doc)
                    lengths.append(len(doc))
            if not buffer:
                return  # the source ran dry: a partial row is dropped, as nanochat never pads
            room = row_len - filled
            best = max((n for n in lengths if n <= room), default=0)  # the largest document that fits
            if best:
                pick = lengths.index(best)
                piece = buffer.pop(pick)
            else:  # nothing fits: crop the shortest to fill the row exactly
                pick = lengths.index(min(lengths))
                piece = buffer.pop(pick).crop(room)
            lengths.pop(pick)
            pieces.append(piece)
            filled += len(piece)
        yield TokenDoc(np.concatenate([p.ids for p in pieces]),
                       {k: np.concatenate([p.extras[k] for p in pieces]) for k in pieces[0].extras})


def tinyworld_docs(tokenizer: Tokenizer, seed: int = 0, start: int = 0, labels: bool = True) -> Iterator[TokenDoc]:
    """TinyWorld documents as tokens (BOS first), with concept labels, document index and position."""
    world = TinyWorld(seed)
    index = start
    while True:
        doc = world.document(index)
        if labels:
            ids, label_matrix = token_labels(doc, tokenizer)
            extras = {"labels": label_matrix}
        else:
            ids, extras = tokenizer.encode(doc.text, prepend_bos=True, allow_special=True), {}
        n = len(ids)
        extras["doc"] = np.full(n, index, dtype=np.int64)
        extras["pos"] = np.arange(n, dtype=np.int32)
        yield TokenDoc(np.asarray(ids, dtype=np.int64), extras)
        index += 1


@dataclass
class TinyWorldSource:
    """TinyWorld documents of one seed, with concept labels."""

    seed: int = 0
    labels: bool = True

    def docs(self, tokenizer: Tokenizer) -> Iterator[TokenDoc]:
        return tinyworld_docs(tokenizer, seed=self.seed, labels=self.labels)

    def describe(self) -> dict:
        return {"kind": "tinyworld", "seed": self.seed}


@dataclass
class FileSource:
    """Documents from .txt (blank-line separated), .jsonl (one object per line) or .parquet files, in order.

    A directory stands for the files with those suffixes inside it, sorted by name (nanochat's
    `base_data/shard_00000.parquet`, ...).
    """

    paths: list[str]
    text_key: str = "text"  # the jsonl field or parquet column holding the text
    files: list[Path] = field(init=False)

    SUFFIXES = (".txt", ".jsonl", ".parquet")

    def __post_init__(self):
        files = []
        for path in map(lambda p: Path(p).expanduser(), self.paths):
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix in self.SUFFIXES)
                if not found:
                    raise FileNotFoundError(f"{path} holds no {'/'.join(self.SUFFIXES)} files")
                files += found
            elif path.is_file():
                if path.suffix not in self.SUFFIXES:
                    found = path.suffix or "no suffix"
                    raise ValueError(f"{path}: expected a {', '.join(self.SUFFIXES)} file, found {found}")
                files.append(path)
            else:
                raise FileNotFoundError(f"text source {path} does not exist")
        if not files:
            raise ValueError("FileSource needs at least one path")
        self.files = files

    def texts(self) -> Iterator[str]:
        for path in self.files:
            if path.suffix == ".txt":
                yield from (block.strip() for block in path.read_text().split("\n\n") if block.strip())
            elif path.suffix == ".jsonl":
                yield from self._jsonl(path)
            else:
                yield from self._parquet(path)

    def _jsonl(self, path: Path) -> Iterator[str]:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not a JSON object ({exc.msg})") from exc
                if not isinstance(record, dict) or not isinstance(record.get(self.text_key), str):
                    raise ValueError(f"{path}:{n}: expected an object with a string field {self.text_key!r}, "
                                     f"found {line.strip()[:80]!r}")
                yield record[self.text_key]

    def _parquet(self, path: Path) -> Iterator[str]:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError("reading parquet shards needs pyarrow: pip install 'saekit[parquet]'") from exc
        shard = pq.ParquetFile(path)
        if self.text_key not in shard.schema_arrow.names:
            raise ValueError(f"{path}: no column {self.text_key!r}; columns are {shard.schema_arrow.names}")
        for group in range(shard.num_row_groups):
            yield from shard.read_row_group(group, columns=[self.text_key]).column(self.text_key).to_pylist()

    def docs(self, tokenizer: Tokenizer) -> Iterator[TokenDoc]:
        for index, text in enumerate(self.texts()):
            ids = np.asarray(tokenizer.encode(text, prepend_bos=True), dtype=np.int64)
            yield TokenDoc(ids, {"doc": np.full(len(ids), index, dtype=np.int64),
                                 "pos": np.arange(len(ids), dtype=np.int32)})

    def describe(self) -> dict:
        return {"kind": "files", "paths": [str(p) for p in self.files], "text_key": self.text_key}


def text_source(spec: str | TinyWorldSource | FileSource) -> TinyWorldSource | FileSource:
    """A source from a string: `tinyworld`, `tinyworld:SEED`, or file/directory paths separated by commas."""
    if not isinstance(spec, str):
        return spec
    if spec == "tinyworld" or spec.startswith("tinyworld:"):
        seed = spec.partition(":")[2]
        if seed and not seed.isdigit():
            raise ValueError(f"expected tinyworld:SEED with an integer seed, found {spec!r}")
        return TinyWorldSource(int(seed or 0))
    return FileSource(spec.split(","))
