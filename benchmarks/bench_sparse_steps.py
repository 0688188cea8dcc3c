"""Where a sparse training step starts to beat a dense one, per architecture, on this machine.

    python benchmarks/bench_sparse_steps.py [--threads 2] [--d-sae 2048] [--batch 4096]

ReLU, Gated and JumpReLU SAEs train on a CPU by listing their active entries once few enough of them
fire (`saekit.sae.sparse`); each architecture's `sparse_max_density` is the density below which that
pays. This script sets the encoder biases so that a chosen fraction of the code is active, then times
one forward and backward on the same batch both ways (the dense path forced with a limit of 0, the
sparse one with a limit of 1), side by side in one run. Both give the same loss and gradients (tested
in tests/test_sae.py); only the time differs. It prints each density's times and their ratio, and the
density where the two cross next to the class's setting.

The shape defaults are bench_train.py's: d_in 128, 2,048 latents, batches of 4,096, 2 threads.
Inputs are Gaussian: the cost depends on the shapes and the density, not on the values.
"""

from __future__ import annotations

import argparse
import time

import torch

from saekit.allocator import reuse_freed_memory
from saekit.sae import ARCHITECTURES, SAEConfig, create_sae

DENSITIES = [0.02, 0.04, 0.06, 0.08, 0.10, 0.15, 0.20, 0.30]
SETTINGS = {"relu": dict(sparsity_coefficient=1.0), "gated": dict(sparsity_coefficient=1.0),
            "jumprelu": dict(sparsity_coefficient=0.1, jumprelu_init_threshold=1.0)}


def sae_at_density(architecture: str, density: float, x: torch.Tensor, d_sae: int):
    """An SAE whose every latent is active on about `density` of the tokens of x."""
    sae = create_sae(SAEConfig(architecture=architecture, d_in=x.shape[1], d_sae=d_sae, **SETTINGS[architecture]))
    sae.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = x @ sae.W_enc
        cut = scores.quantile(1 - density, dim=0)  # per latent: the score only `density` of tokens exceed
        if architecture == "gated":
            sae.b_gate.copy_(-cut)
            sae.b_mag.fill_(1.0)  # open gates carry a positive magnitude
        elif architecture == "jumprelu":
            sae.b_enc.copy_(1.0 - cut)  # above the threshold of 1 where the score passes the cut
        else:
            sae.b_enc.copy_(-cut)
    return sae


def step_ms(sae, x: torch.Tensor, limit: float, repeats: int) -> tuple[float, float]:
    """Milliseconds per forward + backward at sparse limit `limit` (median of `repeats`), and the L0 density."""
    type(sae).sparse_max_density = limit
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        out = sae(x)
        out.loss.backward()
        times.append(time.perf_counter() - start)
        sae.zero_grad(set_to_none=True)
    return 1000 * sorted(times[2:])[repeats // 2], float(out.l0) / sae.cfg.d_sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    x = torch.randn(args.batch, 128, generator=torch.Generator().manual_seed(1))
    print(f"forward + backward, d_in 128, {args.d_sae} latents, batch {args.batch}, {args.threads} threads, "
          f"torch {torch.__version__}; milliseconds (median of {args.repeats})\n")
    print(f"{'architecture':<12} {'density':>8} {'dense':>8} {'sparse':>8} {'sparse/dense':>13}")
    for architecture in SETTINGS:
        setting = ARCHITECTURES[architecture].sparse_max_density
        crossing = None
        for density in DENSITIES:
            sae = sae_at_density(architecture, density, x, args.d_sae)
            dense, measured = step_ms(sae, x, 0.0, args.repeats)
            sparse, _ = step_ms(sae, x, 1.0, args.repeats)
            print(f"{architecture:<12} {measured:>8.3f} {dense:>8.1f} {sparse:>8.1f} {sparse / dense:>12.2f}x",
                  flush=True)
            if sparse < dense:
                crossing = measured
        ARCHITECTURES[architecture].sparse_max_density = setting
        print(f"{architecture}: sparse pays up to a density of about {crossing or 0:.2f} here; "
              f"sparse_max_density is {setting}\n")


if __name__ == "__main__":
    main()
