"""How long loading the embedded default model takes (target: under 2 s for the call).

    python benchmarks/bench_load.py

Prints the time of `import saekit` (mostly torch) and the median of several `saekit.load_model()` calls,
each in a fresh process so no cache helps.
"""

import statistics
import subprocess
import sys

SNIPPET = """
import time
t0 = time.perf_counter()
import saekit
t1 = time.perf_counter()
model, tokenizer = saekit.load_model()
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def main(repeats: int = 5) -> None:
    imports, loads = [], []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True).stdout
        t_import, t_load = map(float, out.split())
        imports.append(t_import)
        loads.append(t_load)
    print(f"import saekit:        median {statistics.median(imports):.2f} s over {repeats} fresh processes")
    print(f"saekit.load_model():  median {statistics.median(loads):.3f} s (target < 2 s)")


if __name__ == "__main__":
    main()
