"""
The activation store: activations collected once, on disk, read many times by SAE training.

`collect_activations` runs the model over packed rows of a text source, records one or more hook
points (stopping each forward pass after the last of them), drops special tokens (BOS's residual
norm is an extreme outlier) and writes fixed-size shards:

    store/
      manifest.json                 what was collected, from what, and how far (see below)
      shard_00000/
        blocks.3.hook_resid_post.bin   raw [n, d_in] activations (float32, bfloat16 or float16)
        tokens.bin  doc.bin  pos.bin   token id, document index, position in the document
        labels.bin                     TinyWorld concept labels, one uint64 bit mask per token

Every file is plain binary that `numpy.memmap` reads. The manifest records the model (name,
config and a weight fingerprint), source, hook points and widths, dtype, token counts per shard, the
scaling constant that makes the mean ||x|| equal sqrt(d_in) (from per-shard norm sums), and exactly
how far into the source collection has got.

A shard is written under a temporary name and renamed when complete, and the manifest is
replaced atomically after each shard; so a collection killed at any moment resumes exactly where
its last complete shard ended, with no token lost or duplicated. Shards are written by a
background thread while the model computes the next batches; memory holds at most a few shards,
whatever the number of tokens collected.

`ActivationStore` reads a store back: memory-mapped shards, the token facts, the scaling
constant, and shuffled batches that resume exactly from any batch number.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import shutil
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # text on stderr: notebooks stay comparable under nbval

from saekit.allocator import reuse_freed_memory
from saekit.atomic import write_json_atomic
from saekit.data import TinyWorldSource, pack_rows, text_source
from saekit.hooks import hook_points, resolve, run_until
from saekit.world import CONCEPTS

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES = {"float32": (torch.float32, np.float32), "bfloat16": (torch.bfloat16, np.uint16),
          "float16": (torch.float16, np.float16)}
META_FILES = {"tokens": np.int32, "doc": np.int64, "pos": np.int32, "labels": np.uint64}


class StoreError(ValueError):
    """An activation store that is inconsistent, corrupt, or does not match what was asked of it."""


def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap fingerprint of a model's weights: shapes plus the first bytes of every tensor."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)[:1024].float().cpu().numpy()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(flat.tobytes())
    return digest.hexdigest()[:16]


def _pack_labels(labels: np.ndarray) -> np.ndarray:
    """[n, n_concepts <= 64] bool -> [n] uint64 bit masks (concept i is bit i)."""
    packed = np.packbits(labels, axis=1, bitorder="little")
    padded = np.zeros((len(labels), 8), dtype=np.uint8)
    padded[:, :packed.shape[1]] = packed
    return padded.view("<u8")[:, 0].astype(np.uint64)


def unpack_labels(masks: np.ndarray, n_concepts: int = len(CONCEPTS)) -> np.ndarray:
    """[n] uint64 bit masks -> [n, n_concepts] bool."""
    bits = np.left_shift(np.uint64(1), np.arange(n_concepts, dtype=np.uint64))
    return (masks[:, None] & bits) != 0


# --------------------------------------------------------------------------- reading


class ActivationStore:
    """A collected store, read back: shards memory-mapped, batches shuffled across shards."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no activation store at {self.path} (expected {MANIFEST})")
        try:
            self.manifest = json.loads(manifest_path.read_text())
            self.hooks: dict[str, int] = self.manifest["hooks"]
            self.shards: list[dict] = self.manifest["shards"]
            self.dtype: str = self.manifest["dtype"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreError(f"{manifest_path} is not a valid activation-store manifest: {exc}") from exc
        if self.manifest.get("version") != FORMAT_VERSION:
            raise StoreError(f"{manifest_path} has format version {self.manifest.get('version')}, "
                             f"expected {FORMAT_VERSION}")
        self._check_shards()

    def _check_shards(self) -> None:
        itemsize = np.dtype(DTYPES[self.dtype][1]).itemsize
        for shard in self.shards:
            folder = self.path / shard["name"]
            expected = {f"{hook}.bin": shard["tokens"] * d * itemsize for hook, d in self.hooks.items()}
            expected.update({f"{k}.bin": shard["tokens"] * np.dtype(t).itemsize
                             for k, t in META_FILES.items() if k != "labels" or self.has_labels})
            for name, size in expected.items():
                file = folder / name
                if not file.is_file():
                    raise StoreError(f"store {self.path}: {shard['name']}/{name} is missing")
                if file.stat().st_size != size:
                    raise StoreError(f"store {self.path}: {shard['name']}/{name} has {file.stat().st_size} bytes, "
                                     f"expected {size} ({shard['tokens']} tokens); the shard is truncated or corrupt")

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest.get("labels"))

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def d_in(self, hook: str | None = None) -> int:
        return self.hooks[self._hook(hook)]

    def _hook(self, hook: str | None) -> str:
        if hook is None:
            if len(self.hooks) != 1:
                raise StoreError(f"this store holds several hook points {list(self.hooks)}; name one")
            return next(iter(self.hooks))
        if hook not in self.hooks:
            raise StoreError(f"this store holds {list(self.hooks)}, not {hook!r}")
        return hook

    def mean_norm(self, hook: str | None = None) -> float:
        return _scaling(self.manifest)[self._hook(hook)]["mean_norm"]

    def scaling_factor(self, hook: str | None = None) -> float:
        """The constant c with mean ||c x|| = sqrt(d_in) over the whole store."""
        return _scaling(self.manifest)[self._hook(hook)]["factor"]

    def shard_activations(self, index: int, hook: str | None = None) -> torch.Tensor:
        """One shard's activations [n, d_in], memory-mapped (float32 view for float32 stores)."""
        hook = self._hook(hook)
        shard = self.shards[index]
        torch_dtype, np_dtype = DTYPES[self.dtype]
        # copy-on-write mapping: nothing is read until used, and torch gets a writable array
        array = np.memmap(self.path / shard["name"] / f"{hook}.bin", dtype=np_dtype, mode="c",
                          shape=(shard["tokens"], self.hooks[hook]))
        return torch.from_numpy(array).view(torch_dtype)

    def _meta(self, key: str) -> np.ndarray:
        parts = [np.fromfile(self.path / s["name"] / f"{key}.bin", dtype=META_FILES[key]) for s in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=META_FILES[key])

    def tokens(self) -> np.ndarray:
        return self._meta("tokens")

    def documents(self) -> np.ndarray:
        return self._meta("doc")

    def positions(self) -> np.ndarray:
        return self._meta("pos")

    def label_masks(self) -> np.ndarray:
        """[n_tokens] uint64 concept labels as stored: concept i is bit i (TinyWorld sources only)."""
        if not self.has_labels:
            raise StoreError(f"store {self.path} has no concept labels (its source is {self.manifest['source']})")
        return self._meta("labels")

    def labels(self) -> np.ndarray:
        """[n_tokens, n_concepts] bool concept labels (TinyWorld sources only)."""
        return unpack_labels(self.label_masks())

    def activations(self, hook: str | None = None, scaled: bool = False) -> torch.Tensor:
        """Every activation of `hook` in memory as float32 [n_tokens, d_in] — for small stores."""
        out = torch.cat([self.shard_activations(i, hook).float() for i in range(len(self.shards))])
        return out * self.scaling_factor(hook) if scaled else out

    def batches(self, batch_size: int, hook: str | None = None, seed: int = 0, scaled: bool = True,
                start: int = 0, mix_shards: int = 4, epochs: int | None = None) -> Iterator[torch.Tensor]:
        """Shuffled float32 batches [batch_size, d_in], forever (or for `epochs` passes).

        Each epoch visits the shards in a seeded random order, `mix_shards` at a time, shuffling the
        tokens within each group, so memory holds one group. Batch `k` depends only on `seed` and
        `k`: `start=k` resumes a stream exactly, as a training checkpoint needs.
        """
        hook = self._hook(hook)
        if batch_size <= 0 or mix_shards <= 0:
            raise ValueError(f"batch_size and mix_shards must be positive, got {batch_size} and {mix_shards}")
        if len(self) < batch_size:
            raise StoreError(f"store holds {len(self)} tokens, fewer than one batch of {batch_size}")
        scale = self.scaling_factor(hook) if scaled else 1.0
        per_epoch = len(self) // batch_size  # each epoch's last partial batch is dropped
        epoch, skip_batches = divmod(start, per_epoch)
        while epochs is None or epoch < epochs:
            to_skip, emitted, pending = skip_batches * batch_size, skip_batches, None
            for g, group in enumerate(self._epoch_groups(seed, epoch, mix_shards)):
                size = sum(self.shards[i]["tokens"] for i in group)
                if to_skip >= size:
                    to_skip -= size
                    continue
                generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + g)
                data = torch.cat([self.shard_activations(i, hook) for i in group])
                data = data[torch.randperm(size, generator=generator)[to_skip:]].float()
                to_skip = 0
                if pending is not None:
                    data = torch.cat([pending, data])
                full = min(len(data) // batch_size, per_epoch - emitted)
                for j in range(full):
                    yield data[j * batch_size:(j + 1) * batch_size] * scale
                emitted += full
                pending = data[full * batch_size:]
            epoch, skip_batches = epoch + 1, 0

    def _epoch_groups(self, seed: int, epoch: int, mix_shards: int) -> list[tuple[int, ...]]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.shards), generator=generator).tolist()
        return [tuple(order[i:i + mix_shards]) for i in range(0, len(order), mix_shards)]

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, {len(self):,} tokens, hooks={list(self.hooks)}, "
                f"dtype={self.dtype}, {len(self.shards)} shards)")


class InMemoryStore(ActivationStore):
    """The same reading interface over tensors held in memory (small collections, notebooks)."""

    def __init__(self, manifest: dict, activations: dict[str, torch.Tensor], meta: dict[str, np.ndarray]):
        self.path = Path("<memory>")
        self.manifest = manifest
        self.hooks, self.shards, self.dtype = manifest["hooks"], manifest["shards"], manifest["dtype"]
        self._activations = activations
        self._meta_arrays = meta

    @classmethod
    def from_tensor(cls, activations: torch.Tensor, hook: str = "activations") -> InMemoryStore:
        """A store over given activations [n, d] (no tokens or labels): synthetic data, toy models."""
        n, d = activations.shape
        manifest = {"version": FORMAT_VERSION, "hooks": {hook: d}, "dtype": "float32", "labels": False,
                    "source": {"kind": "tensor"}, "complete": True,
                    "shards": [{"name": "memory", "tokens": n,
                                "norm_sums": {hook: float(activations.double().norm(dim=1).sum())}}]}
        zeros = np.zeros(n, dtype=np.int64)
        return cls(manifest, {hook: activations.float()}, {"tokens": zeros, "doc": zeros, "pos": zeros})

    def shard_activations(self, index: int, hook: str | None = None) -> torch.Tensor:
        if index != 0:
            raise IndexError(f"an in-memory store has one shard, not {index + 1}")
        return self._activations[self._hook(hook)]

    def _meta(self, key: str) -> np.ndarray:
        return self._meta_arrays[key]


# --------------------------------------------------------------------------- collecting


class _Buffer:
    """Collected activations and token facts waiting to be written, and which batches they came from.

    The source is read in batches of rows; each batch contributes its kept (non-special) tokens.
    `batch_kept` holds (rows, kept tokens) of the batches that are (partly) in the buffer, and
    `offset` how many tokens of the first of them were already written. `take(n)` removes the first
    n tokens and says how many rows' batches are now entirely written, so the manifest always points
    at the exact next token: (rows of whole batches consumed, tokens into the next batch). Resuming
    re-reads that batch whole, so every forward pass sees exactly the rows it saw the first time.
    Data stays in per-batch pieces until written: nothing is concatenated on the way to disk.
    """

    def __init__(self, hooks: list[str], with_labels: bool):
        self.activations: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
        self.norms: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
        self.meta: dict[str, list[np.ndarray]] = {k: [] for k in META_FILES if k != "labels" or with_labels}
        self.tokens = 0
        self.batch_kept: deque[tuple[int, int]] = deque()
        self.offset = 0

    def add(self, acts: dict[str, torch.Tensor], norms: dict[str, np.ndarray], meta: dict[str, np.ndarray], rows: int,
            kept: int) -> None:
        for hook, tensor in acts.items():
            self.activations[hook].append(tensor)
            self.norms[hook].append(norms[hook])
        for key, array in meta.items():
            self.meta[key].append(array.astype(META_FILES[key], copy=False))
        self.tokens += len(meta["tokens"])
        self.batch_kept.append((rows, kept))

    def take(self, n: int) -> tuple[dict[str, list], dict[str, list], dict[str, float], int]:
        """The first n tokens as lists of pieces, their norm sums, and the rows whose batches they complete."""
        acts = {h: _split(parts, n) for h, parts in self.activations.items()}
        meta = {k: _split(parts, n) for k, parts in self.meta.items()}
        norm_sums = {h: float(sum(piece.sum() for piece in _split(parts, n))) for h, parts in self.norms.items()}
        self.tokens -= n
        rows_done, written = 0, n
        while self.batch_kept and self.batch_kept[0][1] - self.offset <= written:
            rows, kept = self.batch_kept.popleft()
            written -= kept - self.offset
            self.offset = 0
            rows_done += rows
        self.offset += written
        return acts, meta, norm_sums, rows_done


def _split(parts: list, n: int) -> list:
    """Remove the first n rows from a list of arrays (in place) and return them as a list of pieces."""
    head = []
    while n and parts:
        if len(parts[0]) <= n:
            n -= len(parts[0])
            head.append(parts.pop(0))
        else:
            head.append(parts[0][:n])
            parts[0] = parts[0][n:]
            n = 0
    return head


def _storage_array(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    torch_dtype, np_dtype = DTYPES[dtype]
    tensor = tensor.to(torch_dtype).contiguous()
    return (tensor.view(torch.uint16) if dtype == "bfloat16" else tensor).numpy().astype(np_dtype, copy=False)


def _write_shard(store: Path, name: str, acts: dict[str, list[torch.Tensor]], meta: dict[str, list[np.ndarray]],
                 dtype: str) -> None:
    """Write one shard's files under a temporary name, then rename the folder into place."""
    tmp = store / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {f"{hook}.bin": [_storage_array(t, dtype) for t in parts] for hook, parts in acts.items()}
    files.update({f"{key}.bin": parts for key, parts in meta.items()})
    for filename, parts in files.items():
        with open(tmp / filename, "wb") as f:
            for part in parts:
                part.tofile(f)
    os.replace(tmp, store / name)


def _expected_manifest(model, hooks: dict[str, int], source_info: dict, context_size: int, batch_rows: int,
                       dtype: str, exclude_special: bool, labels: bool, autocast: torch.dtype | None) -> dict:
    return {
        "version": FORMAT_VERSION,
        "model": {"name": getattr(model, "name", type(model).__name__), "fingerprint": model_fingerprint(model),
                  "config": model.config.nanochat_config() if hasattr(model, "config") else None},
        "source": source_info, "hooks": hooks, "dtype": dtype, "context_size": context_size, "batch_rows": batch_rows,
        "exclude_special": exclude_special, "labels": labels,
        **({"autocast": str(autocast).removeprefix("torch.")} if autocast is not None else {}),
    }


def _check_resumable(path: Path, existing: dict, expected: dict) -> None:
    for key in ("version", "model", "source", "hooks", "dtype", "context_size", "batch_rows", "exclude_special",
                "labels", "autocast"):
        if existing.get(key) != expected.get(key):
            raise StoreError(f"cannot resume the store at {path}: its {key} is {existing.get(key)!r}, but this "
                             f"collection has {expected.get(key)!r}. Use another directory, or delete this one.")


def collect_activations(model: torch.nn.Module, tokenizer, hooks: str | list[str], n_tokens: int,
                        out_dir: str | os.PathLike | None = None, *, source="tinyworld",
                        context_size: int | None = None, batch_rows: int = 32, dtype: str = "float32",
                        exclude_special: bool = True, shard_bytes: int = 64 * 2**20,
                        autocast: torch.dtype | None = None, progress: bool = True) -> ActivationStore:
    """Collect `n_tokens` activations at `hooks` into a store at `out_dir` (or in memory if None).

    `source` is a text source or its spec (`"tinyworld"`, `"tinyworld:SEED"`, file paths; see
    `saekit.data.text_source`). Rows of `context_size` tokens (default: the model's context, at most
    256) start with BOS and are packed as nanochat packs them. Run again on the same `out_dir` to
    resume an interrupted collection or extend a finished one to more tokens.

    `autocast` (e.g. `torch.bfloat16`) runs the model's forward passes under `torch.autocast` on the
    model's device, parameters unchanged: mixed precision, as nanochat itself runs on GPUs. The
    manifest records it (only when set), and a store is resumed only with the same setting.
    """
    hooks = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
    reuse_freed_memory()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    points = hook_points(model)
    for hook in hooks:
        resolve(model, hook)
    hooks.sort(key=list(points).index)
    source = text_source(source)
    if context_size is None:
        context_size = min(getattr(getattr(model, "config", None), "sequence_len", 256), 256)
    dims = _hook_dims(model, hooks)
    labels = isinstance(source, TinyWorldSource) and source.labels
    expected = _expected_manifest(model, dims, source.describe(), context_size, batch_rows, dtype, exclude_special,
                                  labels, autocast)

    path = None if out_dir is None else Path(out_dir)
    manifest = {**expected, "shards": [], "rows_consumed": 0, "target_tokens": n_tokens, "complete": False}
    if path is not None:
        manifest = _open_for_writing(path, expected, manifest, n_tokens)
        if manifest["complete"] and sum(s["tokens"] for s in manifest["shards"]) >= n_tokens:
            return ActivationStore(path)

    itemsize = np.dtype(DTYPES[dtype][1]).itemsize
    shard_tokens = max(1, shard_bytes // (itemsize * sum(dims.values())))
    special = np.array(sorted(tokenizer.special_id_set), dtype=np.int64)
    rows = pack_rows(source.docs(tokenizer), context_size)
    for _ in range(manifest["rows_consumed"]):
        next(rows)
    collected = sum(s["tokens"] for s in manifest["shards"])
    buffer = _Buffer(hooks, labels)
    drop = buffer.offset = manifest.get("tokens_into_next_batch", 0)  # written by the run this one continues
    in_memory: list[tuple[dict, dict]] = []
    writer = None if path is None else _ShardWriter(path, dtype)
    bar = tqdm(total=n_tokens, initial=collected, desc="collect", unit="tok", disable=not progress)

    def write_shard(n: int) -> None:
        nonlocal collected
        acts, meta, norm_sums, rows_done = buffer.take(n)
        entry = {"name": f"shard_{len(manifest['shards']):05d}", "tokens": n, "norm_sums": norm_sums}
        collected += n
        manifest["shards"].append(entry)
        manifest["rows_consumed"] += rows_done
        manifest["tokens_into_next_batch"] = buffer.offset
        manifest["complete"] = collected == n_tokens
        manifest["scaling"] = _scaling(manifest)
        if writer is None:
            in_memory.append((acts, meta))
        else:
            writer.submit(entry["name"], acts, meta, manifest)

    try:
        while collected + buffer.tokens < n_tokens:
            batch = [row for row in (next(rows, None) for _ in range(batch_rows)) if row is not None]
            if not batch:
                manifest["source_exhausted"] = True
                break
            first_row = manifest["rows_consumed"] + sum(r for r, _ in buffer.batch_kept)
            acts, norms, meta = _batch_activations(model, batch, hooks, dims, special, exclude_special, labels, dtype,
                                                   first_row, autocast)
            kept = len(meta["tokens"])
            buffer.add({h: a[drop:] for h, a in acts.items()}, {h: n[drop:] for h, n in norms.items()},
                       {k: m[drop:] for k, m in meta.items()}, len(batch), kept)
            drop = 0
            while buffer.tokens >= shard_tokens and collected < n_tokens:
                write_shard(min(shard_tokens, n_tokens - collected))
            bar.update(min(collected + buffer.tokens, n_tokens) - bar.n)
        if buffer.tokens and collected < n_tokens:
            write_shard(min(buffer.tokens, n_tokens - collected))
        manifest["complete"] = True
        if writer is not None:
            writer.submit(None, {}, {}, manifest)
    finally:
        bar.close()
        if writer is not None:  # finish every shard submitted so far, even when an error stopped the loop
            writer.close(raise_error=sys.exc_info()[0] is None)
    if path is not None:
        return ActivationStore(path)
    acts = {h: torch.cat([piece for a, _ in in_memory for piece in a[h]]) for h in hooks}
    meta = {k: np.concatenate([piece for _, m in in_memory for piece in m[k]]) for k in in_memory[0][1]}
    manifest["shards"] = [{"name": "memory", "tokens": collected,
                           "norm_sums": {h: sum(s["norm_sums"][h] for s in manifest["shards"]) for h in hooks}}]
    return InMemoryStore(manifest, acts, meta)


def _scaling(manifest: dict) -> dict[str, dict[str, float]]:
    """Per hook: the mean activation norm so far, and the factor that scales it to sqrt(d_in)."""
    tokens = sum(s["tokens"] for s in manifest["shards"])
    out = {}
    for hook, d_in in manifest["hooks"].items():
        mean_norm = sum(s["norm_sums"][hook] for s in manifest["shards"]) / max(1, tokens)
        out[hook] = {"mean_norm": mean_norm, "factor": math.sqrt(d_in) / mean_norm if mean_norm else 1.0}
    return out


def _batch_activations(model, batch, hooks, dims, special, exclude_special, labels, dtype, first_row, autocast=None):
    """One forward pass (stopped after the last hook, under autocast if given) over a batch of rows: the kept
    tokens' activations (in the storage dtype), their norms (of the stored values, in float64) and their token
    facts."""
    ids = np.stack([row.ids for row in batch])
    keep = ~np.isin(ids, special) if exclude_special else np.ones(ids.shape, dtype=bool)
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        captured = run_until(model, torch.from_numpy(ids).to(device), hooks)
    flat_keep = torch.from_numpy(keep.reshape(-1))
    acts, norms = {}, {}
    for hook in hooks:
        acts[hook] = captured[hook].reshape(-1, dims[hook]).cpu()[flat_keep].to(DTYPES[dtype][0])
        norms[hook] = acts[hook].double().norm(dim=1).numpy()  # NaN or inf in a vector makes its norm so
        if not np.isfinite(norms[hook]).all():
            hint = " (float16 turns values beyond 65504 into inf: try bfloat16)" if dtype == "float16" else ""
            raise StoreError(f"NaN or infinite activations at {hook} in source rows {first_row}.."
                             f"{first_row + len(batch) - 1}{hint}; the store keeps only the shards written before them")
    meta = {"tokens": ids[keep], "doc": np.stack([row.extras["doc"] for row in batch])[keep],
            "pos": np.stack([row.extras["pos"] for row in batch])[keep]}
    if labels:
        meta["labels"] = _pack_labels(np.concatenate([row.extras["labels"] for row in batch])[keep.reshape(-1)])
    return acts, norms, meta


class _ShardWriter:
    """Writes shards, then the manifest that records them, in order, on one background thread.

    Disk writes release the GIL, so they overlap the model's next forward passes. At most one shard
    waits in the queue. An error in the thread is raised in the collecting thread at the next
    submit or at close.
    """

    def __init__(self, path: Path, dtype: str):
        self.path, self.dtype = path, dtype
        self.jobs: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="saekit-shard-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            name, acts, meta, manifest = job
            if self.error is not None:
                continue
            try:
                if name is not None:
                    _write_shard(self.path, name, acts, meta, self.dtype)
                write_json_atomic(self.path / MANIFEST, manifest)
            except BaseException as exc:  # handed to the collecting thread
                self.error = exc

    def submit(self, name: str | None, acts: dict, meta: dict, manifest: dict) -> None:
        self._raise_error()
        self.jobs.put((name, acts, meta, json.loads(json.dumps(manifest))))

    def close(self, raise_error: bool = True) -> None:
        self.jobs.put(None)
        self.thread.join()
        if raise_error:
            self._raise_error()

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise StoreError(f"writing the store at {self.path} failed: {error}") from error


def _hook_dims(model, hooks: list[str]) -> dict[str, int]:
    """The width of each hook point, from one tiny forward pass."""
    probe = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    captured = run_until(model, probe, hooks)
    return {h: int(captured[h].shape[-1]) for h in hooks}


def _open_for_writing(path: Path, expected: dict, fresh: dict, n_tokens: int) -> dict:
    """The manifest to continue from (a fresh one for a new store), with leftovers of a crash removed."""
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists and is not an activation store; choose an empty or new directory")
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest_path, fresh)
        return fresh
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{manifest_path} is corrupt ({exc}); delete the store to collect again") from exc
    _check_resumable(path, manifest, expected)
    recorded = {s["name"] for s in manifest["shards"]}
    for leftover in path.iterdir():  # half-written shards, and shards whose manifest update never happened
        if leftover.is_dir() and leftover.name.startswith("shard_") and leftover.name not in recorded:
            shutil.rmtree(leftover)
    ActivationStore(path)  # every recorded shard must be intact
    total = sum(s["tokens"] for s in manifest["shards"])
    if n_tokens < total:
        raise StoreError(f"the store at {path} already holds {total:,} tokens, more than the {n_tokens:,} asked for")
    if n_tokens > total and manifest.get("source_exhausted"):
        raise StoreError(f"the store at {path} used up its source at {total:,} tokens; it cannot grow to {n_tokens:,}")
    manifest["target_tokens"] = n_tokens
    if n_tokens > total:
        manifest["complete"] = False
    return manifest


class ActivationStream:
    """Activations computed from the model as training asks for them, for one hook point, without disk.

    Rows of the source are taken `chunk_rows` at a time; each chunk's kept tokens are shuffled (seeded
    by the chunk) and the chunks are concatenated into one stream that batches are cut from. Batch k
    depends only on (seed, k), and skipping to it only tokenizes the chunks before it, so training
    from a stream resumes exactly. The scaling constant comes from the first `scale_rows` rows.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, hook: str, source="tinyworld",
                 context_size: int | None = None, chunk_rows: int = 64, scale_rows: int = 64,
                 exclude_special: bool = True):
        resolve(model, hook)
        self.model, self.tokenizer, self.hook = model, tokenizer, hook
        self.source = text_source(source)
        self.context_size = context_size or min(getattr(getattr(model, "config", None), "sequence_len", 256), 256)
        self.chunk_rows, self.scale_rows, self.exclude_special = chunk_rows, scale_rows, exclude_special
        self.width = _hook_dims(model, [hook])[hook]
        self.special = np.array(sorted(tokenizer.special_id_set), dtype=np.int64)
        self._scale: float | None = None

    def d_in(self, hook: str | None = None) -> int:
        self._check(hook)
        return self.width

    def _check(self, hook: str | None) -> None:
        if hook is not None and hook != self.hook:
            raise StoreError(f"this stream computes {self.hook!r}, not {hook!r}")

    def _chunks(self) -> Iterator[tuple[int, list]]:
        rows = pack_rows(self.source.docs(self.tokenizer), self.context_size)
        index = 0
        while True:
            chunk = [row for row in (next(rows, None) for _ in range(self.chunk_rows)) if row is not None]
            if not chunk:
                return
            yield index, chunk
            index += 1

    def _activations(self, chunk: list, first_row: int) -> torch.Tensor:
        acts, _, _ = _batch_activations(self.model, chunk, [self.hook], {self.hook: self.width}, self.special,
                                        self.exclude_special, False, "float32", first_row)
        return acts[self.hook]

    def _kept(self, chunk: list) -> int:
        ids = np.stack([row.ids for row in chunk])
        return int((~np.isin(ids, self.special)).sum()) if self.exclude_special else ids.size

    def scaling_factor(self, hook: str | None = None) -> float:
        """sqrt(d_in) / mean ||x|| over the first `scale_rows` rows."""
        self._check(hook)
        if self._scale is None:
            norms, rows = [], 0
            for index, chunk in self._chunks():
                norms.append(self._activations(chunk, index * self.chunk_rows).double().norm(dim=1))
                rows += len(chunk)
                if rows >= self.scale_rows:
                    break
            self._scale = math.sqrt(self.width) / float(torch.cat(norms).mean())
        return self._scale

    def batches(self, batch_size: int, hook: str | None = None, seed: int = 0, scaled: bool = True,
                start: int = 0) -> Iterator[torch.Tensor]:
        """Scaled float32 batches [batch_size, d_in], until the source runs out."""
        self._check(hook)
        scale = self.scaling_factor() if scaled else 1.0
        to_skip, pending = start * batch_size, None
        for index, chunk in self._chunks():
            kept = self._kept(chunk)
            if to_skip >= kept:
                to_skip -= kept
                continue
            data = self._activations(chunk, index * self.chunk_rows)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            data = data[torch.randperm(len(data), generator=generator)][to_skip:] * scale
            to_skip = 0
            if pending is not None:
                data = torch.cat([pending, data])
            full = len(data) // batch_size
            for j in range(full):
                yield data[j * batch_size:(j + 1) * batch_size]
            pending = data[full * batch_size:]
