"""Feature statistics speed: 2,048 latents over the course store's 1M tokens, against encoding alone.

    python benchmarks/bench_features.py               # TopK (k = 32) SAE
    python benchmarks/bench_features.py --relu        # and a ReLU (L1) SAE, whose codes are less sparse
    python benchmarks/bench_features.py --threads 1   # on a machine other jobs keep busy (see below)

Target on a 2-core CPU: `feature_statistics` for 2,048 latents over 1M tokens of the default model
in at most 60 s. Beside it, the same tokens read from the store and encoded by the SAE, nothing
else: the floor any statistics pass pays (timed before and after, averaged). Their ratio is what
the bookkeeping (top activations, interval samples, histograms, correlations, concept matches,
windows) costs, and it is less sensitive to the machine's load than either time; the load average
is printed too. On a machine whose cores other jobs keep busy, two threads can be slower than one
(each parallel operation waits for a descheduled thread): compare with `--threads 1` there.

The SAEs are trained once (200 steps x 4,096 tokens) and cached next to the course store.
"""

from __future__ import annotations

import os
import sys
import time

import torch

import saekit
from saekit.course import COURSE_HOOK, cache_dir, course_store
from saekit.features import feature_statistics
from saekit.sae import SAEConfig, create_sae
from saekit.sae.io import load_sae
from saekit.store import model_fingerprint
from saekit.train import TrainConfig, train_sae

D_SAE, N_TOKENS, BATCH = 2048, 1_000_000, 8192
CASES = {"TopK k=32": dict(architecture="topk", k=32), "ReLU (L1 1.0)": dict(architecture="relu",
                                                                            sparsity_coefficient=1.0)}


def trained_sae(settings: dict, store, model):
    path = cache_dir() / "bench" / f"{model_fingerprint(model)}-{settings['architecture']}-{D_SAE}"
    if not (path / "cfg.json").exists():
        sae = create_sae(SAEConfig(d_in=store.d_in(), d_sae=D_SAE, hook_name=COURSE_HOOK, **settings))
        train_sae(sae, store, TrainConfig(steps=200, batch_size=4096), progress=False).save(path)
    return load_sae(path).eval()


def encode_only(sae, store) -> float:
    """Seconds to read N_TOKENS activations in order and encode them (the codes are dropped)."""
    start = time.perf_counter()
    with torch.no_grad():
        remaining = N_TOKENS
        for shard in range(len(store.shards)):
            x = store.shard_activations(shard)
            for i in range(0, len(x), BATCH):
                if remaining <= 0:
                    return time.perf_counter() - start
                batch = x[i:i + min(BATCH, remaining)].float()
                remaining -= len(batch)
                sae.encode(batch)
    return time.perf_counter() - start


def main() -> None:
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
    torch.set_num_threads(threads)
    store = course_store(progress=False)
    model, tokenizer = saekit.load_model()
    cases = list(CASES.items())[:2 if "--relu" in sys.argv else 1]
    print(f"course store: {len(store):,} tokens at {COURSE_HOOK}; torch {torch.__version__}, {threads} threads; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("| SAE | L0 | encode only (s) | feature_statistics (s) | CPU (s) | ratio | alive latents | target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, settings in cases:
        sae = trained_sae(settings, store, model)
        encode_only(sae, store)  # warm the page cache and the allocator, as a second run would find them
        before = encode_only(sae, store)
        wall, cpu = time.perf_counter(), time.process_time()
        stats = feature_statistics(sae, store, model, tokenizer, n_tokens=N_TOKENS, batch_size=BATCH)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        encode = (before + encode_only(sae, store)) / 2  # before and after: the load may drift meanwhile
        l0 = stats.fires.sum() / stats.n_tokens
        print(f"| {name} | {l0:.1f} | {encode:.1f} | {wall:.1f} | {cpu:.1f} | {wall / encode:.2f}x | "
              f"{int((stats.fires > 0).sum()):,} | {'met' if wall <= 60 else 'MISSED'} (<= 60 s) |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
