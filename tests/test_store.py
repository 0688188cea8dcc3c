"""The activation store: exact contents, scaling, shuffled batches, dtypes, resume, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch

import saekit
from saekit.data import pack_rows, tinyworld_docs
from saekit.hooks import patch, run_until
from saekit.store import ActivationStore, StoreError, collect_activations, model_fingerprint

HOOK = "blocks.2.hook_resid_post"
# shards of 256 tokens for two float32 hooks of width 128, 512 for one, 1024 for one in 16 bits
SMALL = dict(context_size=64, batch_rows=8, shard_bytes=256 * 256 * 4, progress=False)


@pytest.fixture(scope="module")
def store(default, tmp_path_factory):
    model, tokenizer = default
    path = tmp_path_factory.mktemp("store") / "s"
    return collect_activations(model, tokenizer, [HOOK, "blocks.1.hook_mlp_out"], 3000, path, **SMALL)


def test_manifest_and_shards(store, default):
    model, _ = default
    m = store.manifest
    assert len(store) == 3000 and store.complete
    assert [s["tokens"] for s in store.shards] == [256] * 11 + [184]
    assert m["hooks"] == {"blocks.1.hook_mlp_out": 128, HOOK: 128}
    assert m["model"]["fingerprint"] == model_fingerprint(model) and m["model"]["name"] == "nanochat-tinyworld"
    assert m["source"] == {"kind": "tinyworld", "seed": 0} and m["dtype"] == "float32" and m["exclude_special"]
    assert sorted(p.name for p in (store.path / "shard_00000").iterdir()) == [
        "blocks.1.hook_mlp_out.bin", f"{HOOK}.bin", "doc.bin", "labels.bin", "pos.bin", "tokens.bin"]


def test_contents_are_exactly_the_models_activations_on_packed_rows(store, default):
    model, tokenizer = default
    rows = pack_rows(tinyworld_docs(tokenizer), 64)
    ids = torch.from_numpy(np.stack([next(rows).ids for _ in range(8)]))
    expected = run_until(model, ids, HOOK)[HOOK].reshape(-1, 128)
    keep = ~torch.isin(ids.reshape(-1), torch.tensor(sorted(tokenizer.special_id_set)))
    expected = expected[keep]
    n = len(expected)
    got = store.activations(HOOK)[:n]
    assert torch.equal(got, expected)
    tokens = store.tokens()
    assert np.array_equal(tokens[:n], ids.reshape(-1)[keep].numpy())
    assert not np.isin(tokens, sorted(tokenizer.special_id_set)).any()  # BOS and chat markers excluded


def test_labels_documents_and_positions_travel_with_the_tokens(store, default):
    _, tokenizer = default
    world = saekit.TinyWorld(0)
    tokens, docs, positions, labels = store.tokens(), store.documents(), store.positions(), store.labels()
    assert labels.shape == (3000, len(saekit.CONCEPTS))
    for t in range(0, 3000, 97):
        ids, doc_labels = saekit.token_labels(world.document(int(docs[t])), tokenizer)
        assert ids[positions[t]] == tokens[t]
        assert np.array_equal(doc_labels[positions[t]], labels[t])


def test_scaling_constant_makes_the_mean_norm_sqrt_d(store):
    recorded = json.loads((store.path / "manifest.json").read_text())["scaling"][HOOK]
    assert recorded["factor"] == store.scaling_factor(HOOK) and recorded["mean_norm"] == store.mean_norm(HOOK)
    x = store.activations(HOOK)
    assert store.mean_norm(HOOK) == pytest.approx(x.double().norm(dim=1).mean().item(), rel=1e-9)
    assert store.activations(HOOK, scaled=True).norm(dim=1).mean().item() == pytest.approx(128**0.5, rel=1e-5)


def test_batches_are_shuffled_deterministic_and_resumable(store):
    stream = store.batches(256, HOOK, seed=3)
    first = [next(stream) for _ in range(30)]  # 11 batches per epoch: crosses epochs
    again = store.batches(256, HOOK, seed=3)
    assert all(torch.equal(a, next(again)) for a in first)
    resumed = store.batches(256, HOOK, seed=3, start=13)
    assert all(torch.equal(first[k], next(resumed)) for k in range(13, 30))
    epoch = torch.cat(first[:11])
    everything = store.activations(HOOK, scaled=True)
    assert not torch.equal(epoch[:256], everything[:256])  # shuffled
    # an epoch draws stored tokens without replacement (some tokens share a vector: same first token after BOS)
    stored, drawn = Counter(map(bytes, everything.numpy())), Counter(map(bytes, epoch.numpy()))
    assert all(stored[row] >= count for row, count in drawn.items())
    assert sum(drawn.values()) == 11 * 256
    other = store.batches(256, HOOK, seed=4)
    assert not torch.equal(next(other), first[0])
    assert len(list(store.batches(256, HOOK, epochs=2))) == 22


def test_in_memory_mode_equals_the_disk_store(store, default):
    model, tokenizer = default
    memory = collect_activations(model, tokenizer, [HOOK, "blocks.1.hook_mlp_out"], 3000, None, **SMALL)
    assert torch.equal(memory.activations(HOOK), store.activations(HOOK))
    assert np.array_equal(memory.labels(), store.labels())
    assert memory.scaling_factor(HOOK) == pytest.approx(store.scaling_factor(HOOK), rel=1e-12)
    batches = memory.batches(256, HOOK, seed=1)
    assert next(batches).shape == (256, 128)


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 1e-2), ("float16", 1e-3)])
def test_half_precision_stores(dtype, tolerance, store, default, tmp_path):
    model, tokenizer = default
    half = collect_activations(model, tokenizer, HOOK, 3000, tmp_path / dtype, dtype=dtype, **SMALL)
    assert (tmp_path / dtype / "shard_00000" / f"{HOOK}.bin").stat().st_size == 1024 * 128 * 2
    assert half.shard_activations(0).dtype == getattr(torch, dtype)
    full = store.activations(HOOK)
    assert torch.allclose(half.activations(HOOK), full, rtol=tolerance, atol=tolerance * full.abs().max().item())


def test_growing_a_finished_store_equals_collecting_more_at_once(default, tmp_path):
    model, tokenizer = default
    collect_activations(model, tokenizer, HOOK, 700, tmp_path / "grown", **SMALL)  # ends inside a batch
    grown = collect_activations(model, tokenizer, HOOK, 1500, tmp_path / "grown", **SMALL)
    direct = collect_activations(model, tokenizer, HOOK, 1500, None, **SMALL)
    assert torch.equal(grown.activations(), direct.activations())
    assert np.array_equal(grown.tokens(), direct.tokens())
    again = collect_activations(model, tokenizer, HOOK, 1500, tmp_path / "grown", **SMALL)  # already done
    assert len(again) == 1500
    with pytest.raises(StoreError, match="already holds 1,500 tokens, more than the 1,000 asked for"):
        collect_activations(model, tokenizer, HOOK, 1000, tmp_path / "grown", **SMALL)


COLLECT_SCRIPT = """
import sys, saekit
from saekit.store import collect_activations
model, tokenizer = saekit.load_model()
collect_activations(model, tokenizer, "blocks.2.hook_resid_post", 40_000, sys.argv[1], context_size=64,
                    batch_rows=8, shard_bytes=256 * 256 * 4, progress=False)
"""


def test_resume_after_kill_9_loses_and_duplicates_nothing(default, tmp_path):
    model, tokenizer = default
    path = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", COLLECT_SCRIPT, str(path)])
    deadline = time.time() + 120
    while time.time() < deadline:
        manifest = path / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 5:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads((path / "manifest.json").read_text())
    assert not partial["complete"] and 5 <= len(partial["shards"]) < 78
    resumed = collect_activations(model, tokenizer, HOOK, 40_000, path, **SMALL)
    assert not any(p.name.endswith(".tmp") for p in path.iterdir())
    direct = collect_activations(model, tokenizer, HOOK, 40_000, None, **SMALL)
    assert len(resumed) == 40_000
    assert np.array_equal(resumed.tokens(), direct.tokens()) and np.array_equal(resumed.documents(), direct.documents())
    assert torch.equal(resumed.activations(), direct.activations())


def test_resuming_with_another_model_or_width_is_refused(store, default, tmp_path):
    model, tokenizer = default
    changed = saekit.load_model()[0]
    with torch.no_grad():
        changed.lm_head.weight.mul_(2)
    with pytest.raises(StoreError, match="cannot resume the store .*: its model is"):
        collect_activations(changed, tokenizer, [HOOK, "blocks.1.hook_mlp_out"], 4000, store.path, **SMALL)
    with pytest.raises(StoreError, match="its hooks is .*'blocks.1.hook_mlp_out': 128.*this collection has"):
        collect_activations(model, tokenizer, [HOOK, "blocks.1.mlp.hook_post"], 4000, store.path, **SMALL)
    with pytest.raises(StoreError, match="its dtype is 'float32'"):
        collect_activations(model, tokenizer, [HOOK, "blocks.1.hook_mlp_out"], 4000, store.path, dtype="float16",
                            **SMALL)


def copy_store(store, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(store.path, target)
    return target


def test_corrupt_manifest_and_truncated_shard(store, tmp_path, default):
    model, tokenizer = default
    path = copy_store(store, tmp_path)
    shard = path / "shard_00002" / f"{HOOK}.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(StoreError, match=r"shard_00002/blocks.2.hook_resid_post.bin has 1000 bytes, "
                                         r"expected 131072 \(256 tokens\)"):
        ActivationStore(path)
    with pytest.raises(StoreError, match="truncated or corrupt"):
        collect_activations(model, tokenizer, [HOOK, "blocks.1.hook_mlp_out"], 4000, path, **SMALL)
    (path / "manifest.json").write_text('{"version": 1, "hooks": ')
    with pytest.raises(StoreError, match="not a valid activation-store manifest"):
        ActivationStore(path)
    with pytest.raises(StoreError, match="manifest.json is corrupt"):
        collect_activations(model, tokenizer, HOOK, 4000, path, **SMALL)
    with pytest.raises(FileNotFoundError, match="no activation store"):
        ActivationStore(tmp_path / "nothing")


def test_nan_activations_are_refused_and_nothing_half_written(default, tmp_path):
    model, tokenizer = default
    calls = []

    def poison(x):
        calls.append(1)
        return x * float("nan") if len(calls) > 3 else None

    with patch(model, HOOK, poison), pytest.raises(StoreError, match="NaN or infinite activations at blocks.2"):
        collect_activations(model, tokenizer, HOOK, 3000, tmp_path / "nan", **SMALL)
    store = ActivationStore(tmp_path / "nan")  # what was written before is intact and consistent
    assert not store.complete and len(store) == sum(s["tokens"] for s in store.shards)


def test_bad_requests(default, store, tmp_path):
    model, tokenizer = default
    with pytest.raises(ValueError, match="dtype must be one of"):
        collect_activations(model, tokenizer, HOOK, 100, None, dtype="int8")
    with pytest.raises(KeyError, match="unknown hook point 'blocks.2.resid'"):
        collect_activations(model, tokenizer, "blocks.2.resid", 100, None)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="exists and is not an activation store"):
        collect_activations(model, tokenizer, HOOK, 100, tmp_path / "busy")
    with pytest.raises(StoreError, match="holds several hook points"):
        store.activations()
    with pytest.raises(StoreError, match="fewer than one batch"):
        next(store.batches(10_000, HOOK))
