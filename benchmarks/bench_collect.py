"""Activation collection: speed against a bare forward pass, the gain from stopping early, and memory.

    python benchmarks/bench_collect.py            # speed table, then peak RSS at 1M and 10M tokens
    python benchmarks/bench_collect.py --quick    # speed table, then peak RSS at 0.3M and 1M tokens

Everything runs on the embedded default model with the same rows (32 x 256 tokens per batch) and
2 torch threads, side by side in one run:

- `forward`: the model's full forward pass (logits) on pre-tokenized rows;
- `forward to hook`: the same pass stopped after the hook point (the least any collector must do);
- `collect (rows ready)`: `collect_activations` at that hook from the same pre-tokenized rows: the
  hook, the copy, the special-token filter, the NaN check and the shard writes;
- `collect (TinyWorld)`: end to end, generating TinyWorld documents, tokenizing, labelling and
  packing them as it goes.

The collection overhead is the steady-state time per batch of `collect (rows ready)` over `forward to
hook`, minus one (target: at most 5% for one hook point); the fixed start-up of a collection (one tiny
forward pass to learn the hook widths, opening the store, the writer thread) is reported apart.
Stopping early gains `forward / forward to hook`.

Peak RSS is measured in a fresh process per size, collecting at a middle layer into a temporary
store; it should not grow with the number of tokens, since memory holds one shard.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import saekit
from saekit.data import TokenDoc, pack_rows, tinyworld_docs
from saekit.hooks import run_until
from saekit.store import collect_activations

ROWS, CONTEXT, BATCHES = 32, 256, 16


class PreparedRows:
    """A text source replaying rows built beforehand (each already exactly one row long)."""

    def __init__(self, rows: list[TokenDoc]):
        self.rows = rows

    def docs(self, tokenizer):
        return iter(self.rows)

    def describe(self) -> dict:
        return {"kind": "prepared", "rows": len(self.rows)}


def seconds(fn) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speed_table(model, tokenizer, rounds: int = 3) -> None:
    source_rows = pack_rows(tinyworld_docs(tokenizer), CONTEXT)
    rows = [next(source_rows) for _ in range(ROWS * BATCHES)]
    batches = [torch.from_numpy(np.stack([r.ids for r in rows[i:i + ROWS]])) for i in range(0, len(rows), ROWS)]
    per_batch = ROWS * CONTEXT
    kept_per_batch = int(np.mean([(~np.isin(r.ids, sorted(tokenizer.special_id_set))).sum() for r in rows]) * ROWS)

    def forward():
        with torch.no_grad():
            for b in batches:
                model(b)

    t_full = statistics.median(seconds(forward) for _ in range(rounds)) / BATCHES
    print(f"full forward pass: {per_batch / t_full:,.0f} tokens/s\n")
    print(f"{'hook':<26} {'fwd to hook':>12} {'collect(rows)':>14} {'overhead':>9} {'start-up':>9}"
          f" {'collect(TW)':>12} {'stop-early gain':>16}")
    for hook in ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "blocks.5.hook_resid_post"]:
        def to_hook(hook=hook):
            for b in batches:
                run_until(model, b, hook)

        def collect(source, n_batches, hook=hook):
            with tempfile.TemporaryDirectory() as tmp:
                collect_activations(model, tokenizer, hook, n_batches * kept_per_batch - ROWS, f"{tmp}/s",
                                    source=source, context_size=CONTEXT, batch_rows=ROWS, progress=False)

        timings = {"hook": [], "one": [], "all": [], "world": []}
        for _ in range(rounds):  # interleaved, so that the machine's slow drifts hit every variant alike
            timings["hook"].append(seconds(to_hook) / BATCHES)
            timings["one"].append(seconds(lambda: collect(PreparedRows(rows), 1)))
            timings["all"].append(seconds(lambda: collect(PreparedRows(rows), BATCHES)))
            timings["world"].append(seconds(lambda: collect("tinyworld", BATCHES)))
        t = {k: statistics.median(v) for k, v in timings.items()}
        steady = (t["all"] - t["one"]) / (BATCHES - 1)  # per batch, once started
        world = (t["world"] - t["one"]) / (BATCHES - 1)
        print(f"{hook:<26} {per_batch / t['hook']:>12,.0f} {per_batch / steady:>14,.0f} {steady / t['hook'] - 1:>9.1%}"
              f" {t['one'] - t['hook']:>8.2f}s {per_batch / world:>12,.0f} {t_full / t['hook']:>15.2f}x")
    print("(tokens per second of source rows; collect rates are steady-state: the time of a 1-batch collection,"
          "\n model start-up included, is subtracted; overhead = collect(rows) time per batch / fwd to hook - 1)")


RSS_SCRIPT = """
import resource, sys, tempfile, time, torch, saekit
from saekit.store import collect_activations
torch.set_num_threads(2)
model, tokenizer = saekit.load_model()
with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    collect_activations(model, tokenizer, "blocks.2.hook_resid_post", int(sys.argv[1]), tmp + "/s", progress=False)
    seconds = time.perf_counter() - start
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, seconds)
"""


def memory_table(sizes: list[int]) -> None:
    print(f"\n{'tokens':>12} {'peak RSS':>10} {'seconds':>8}")
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(n)], capture_output=True, text=True, check=True)
        rss_kb, seconds = out.stdout.split()
        print(f"{n:>12,} {int(rss_kb) / 1024:>8.0f} MB {float(seconds):>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller memory runs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = saekit.load_model()
    print(f"model {model.name}, {torch.get_num_threads()} threads, batches of {ROWS} x {CONTEXT} tokens\n")
    speed_table(model, tokenizer)
    memory_table([300_000, 1_000_000] if args.quick else [1_000_000, 10_000_000])


if __name__ == "__main__":
    main()
