"""
Evaluating SAEs: how faithfully they reconstruct, and how sparse they are.

Every number is computed in the raw activation space (pass a raw-space SAE: loaded from disk, or
`TrainResult.raw_sae()`), over tokens of a store, which excludes special tokens. Definitions
(x an activation, x_hat its reconstruction, f the code):

| metric | definition |
| --- | --- |
| mse | mean over tokens of ||x - x_hat||^2 |
| explained_variance | 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (variance about the mean, not about zero) |
| fvu | 1 - explained_variance |
| cosine | mean cos(x, x_hat) |
| l2_ratio | mean ||x_hat|| / ||x||: below 1 means the SAE shrinks its reconstructions |
| relative_bias | E||x_hat||^2 / E[x . x_hat]: the gamma minimising ||x_hat / gamma - x||; below 1 = shrinkage |
| l0, l1 | mean number of active latents per token; mean sum of the code |
| dead_fraction, dense_fraction | latents that never fired on the evaluated tokens; that fired on more than 10% |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from saekit.sae.base import SAE


@dataclass
class ReconstructionMetrics:
    tokens: int
    mse: float
    explained_variance: float
    fvu: float
    cosine: float
    l2_ratio: float
    relative_bias: float
    l0: float
    l1: float
    dead_fraction: float
    dense_fraction: float
    firing_frequency: np.ndarray  # per latent, over the evaluated tokens

    def summary(self) -> dict[str, float]:
        """The scalar metrics, rounded for printing."""
        return {k: round(v, 4) for k, v in asdict(self).items() if isinstance(v, float)}


@torch.no_grad()
def reconstruction_metrics(sae: SAE, store, hook: str | None = None, n_tokens: int = 200_000,
                           batch_size: int = 8192) -> ReconstructionMetrics:
    """Reconstruction and sparsity metrics of a raw-space SAE over the first `n_tokens` of a store."""
    sae = sae.eval()
    n = 0
    sums = dict.fromkeys(["sq_err", "sq_norm", "cos", "ratio", "hat_sq", "dot", "l0", "l1"], 0.0)
    total = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for x in _raw_batches(store, hook, n_tokens, batch_size):
        f = sae.encode(x)
        x_hat = sae.decode(f).double()
        x64 = x.double()
        sums["sq_err"] += float((x64 - x_hat).pow(2).sum())
        sums["sq_norm"] += float(x64.pow(2).sum())
        x_norm, hat_norm = x64.norm(dim=1), x_hat.norm(dim=1)
        sums["cos"] += float(((x64 * x_hat).sum(1) / (x_norm * hat_norm).clamp_min(1e-12)).sum())
        sums["ratio"] += float((hat_norm / x_norm.clamp_min(1e-12)).sum())
        sums["hat_sq"] += float(hat_norm.pow(2).sum())
        sums["dot"] += float((x64 * x_hat).sum())
        active = f > 0
        sums["l0"] += float(active.sum())
        sums["l1"] += float(f.double().sum())
        fires += active.sum(0).double()
        total += x64.sum(0)
        n += len(x)
    if n == 0:
        raise ValueError("no tokens to evaluate on")
    variance = sums["sq_norm"] - float(total.pow(2).sum()) / n  # sum of ||x - mean||^2
    ev = 1 - sums["sq_err"] / variance
    frequency = (fires / n).numpy()
    return ReconstructionMetrics(
        tokens=n, mse=sums["sq_err"] / n, explained_variance=ev, fvu=1 - ev, cosine=sums["cos"] / n,
        l2_ratio=sums["ratio"] / n, relative_bias=sums["hat_sq"] / sums["dot"], l0=sums["l0"] / n,
        l1=sums["l1"] / n, dead_fraction=float((frequency == 0).mean()),
        dense_fraction=float((frequency > 0.1).mean()), firing_frequency=frequency)


def _raw_batches(store, hook, n_tokens, batch_size):
    """The store's first n_tokens raw activations, in order, batch by batch."""
    remaining = n_tokens
    for index in range(len(store.shards)):
        shard = store.shard_activations(index, hook)
        for start in range(0, len(shard), batch_size):
            if remaining <= 0:
                return
            x = shard[start:start + min(batch_size, remaining)].float()
            remaining -= len(x)
            yield x
