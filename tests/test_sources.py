"""Text sources: plain text, jsonl and nanochat's parquet shards, packed into BOS-first rows."""

import json

import numpy as np
import pytest

from saekit.data import FileSource, TinyWorldSource, pack_rows, text_source
from saekit.tokenizer import load_tokenizer

TOKENIZER = load_tokenizer("tests/fixtures/nanochat/current-2026-07/tokenizer")
DOCS = ["Mia saw a red fox.", "The owl flew over the river.\nIt was night.", "Tom ate an apple."]


def texts_and_ids(source):
    docs = list(source.docs(TOKENIZER))
    return [TOKENIZER.decode(d.ids[1:]) for d in docs], docs


def test_plain_text_splits_on_blank_lines(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:2]) + "\n\n\n")
    (tmp_path / "b.txt").write_text(DOCS[2])
    texts, docs = texts_and_ids(text_source(str(tmp_path)))
    assert texts == DOCS
    assert all(d.ids[0] == TOKENIZER.bos_id for d in docs)
    assert [int(d.extras["doc"][0]) for d in docs] == [0, 1, 2]


def test_jsonl_reads_a_field_and_reports_bad_lines(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)) + "\n")
    texts, _ = texts_and_ids(FileSource([str(path)], text_key="body"))
    assert texts == DOCS
    with pytest.raises(ValueError, match="docs.jsonl:1: expected an object with a string field 'text'"):
        list(FileSource([str(path)]).texts())
    path.write_text(json.dumps({"text": "fine"}) + "\n{oops\n")
    with pytest.raises(ValueError, match="docs.jsonl:2: not a JSON object"):
        list(FileSource([str(path)]).texts())


def test_parquet_shards_like_nanochats(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = tmp_path / "base_data"
    data.mkdir()
    pq.write_table(pa.table({"text": DOCS[:2]}), data / "shard_00000.parquet", row_group_size=1)
    pq.write_table(pa.table({"text": DOCS[2:]}), data / "shard_00001.parquet")
    texts, _ = texts_and_ids(text_source(str(data)))
    assert texts == DOCS
    with pytest.raises(ValueError, match="no column 'content'; columns are \\['text'\\]"):
        list(FileSource([str(data)], text_key="content").texts())


def test_special_token_text_in_files_stays_ordinary(tmp_path):
    (tmp_path / "a.txt").write_text("hello <|bos|> world")
    (doc,) = list(text_source(str(tmp_path / "a.txt")).docs(TOKENIZER))
    assert list(doc.ids).count(TOKENIZER.bos_id) == 1


def test_rows_start_with_bos_and_nothing_is_padded(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS * 20))
    rows = list(pack_rows(text_source(str(tmp_path)).docs(TOKENIZER), 32))
    assert rows and all(len(r.ids) == 32 and r.ids[0] == TOKENIZER.bos_id for r in rows)
    total = sum(len(d) for d in text_source(str(tmp_path)).docs(TOKENIZER))
    assert sum(len(r.ids) for r in rows) <= total  # some tokens cropped, none invented
    for row in rows:  # every token sits at its document position
        starts = np.flatnonzero(row.extras["pos"] == 0)
        assert row.ids[starts].tolist() == [TOKENIZER.bos_id] * len(starts)


def test_source_specs_and_bad_paths(tmp_path):
    assert text_source("tinyworld") == TinyWorldSource(0)
    assert text_source("tinyworld:7") == TinyWorldSource(7)
    with pytest.raises(ValueError, match="integer seed"):
        text_source("tinyworld:abc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        text_source(str(tmp_path / "missing.txt"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="expected a .txt, .jsonl, .parquet file, found .csv"):
        text_source(str(tmp_path / "x.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .txt/.jsonl/.parquet files"):
        text_source(str(tmp_path / "empty"))
