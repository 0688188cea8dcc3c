"""
Toy superposition: synthetic activations whose true features are known exactly.

TinyWorld's concepts say what a latent *should* mean, but the directions the model uses for them
are unknown. In a toy the directions are the ground truth: `n_features` random unit vectors in a
space of `d` dimensions (more features than dimensions: superposition), each sample a sparse,
non-negative combination of a few of them. An SAE trained on such data should find the features
as its decoder rows, which two scores measure:

- MMCS, the mean max cosine similarity: for each true feature, the best |cosine| with any
  decoder row, averaged (Sharkey et al. 2022). 1.0 means every feature was found.
- MCC, the mean matched |cosine|: decoder rows and features paired one to one (the Hungarian
  algorithm maximises the total), averaged. Unlike MMCS, one decoder row cannot count twice.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def toy_features(n_features: int = 512, d: int = 256, seed: int = 0) -> torch.Tensor:
    """`n_features` random unit directions in `d` dimensions, [n_features, d]."""
    return F.normalize(torch.randn(n_features, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def toy_activations(features: torch.Tensor, n_samples: int, active: float = 5.0, seed: int = 1) -> torch.Tensor:
    """Samples x = sum_i c_i f_i with each feature present with probability active / n_features and
    coefficient c_i ~ Uniform(0, 1) when present: [n_samples, d]."""
    g = torch.Generator().manual_seed(seed)
    n_features = len(features)
    present = torch.rand(n_samples, n_features, generator=g) < active / n_features
    coefficients = torch.rand(n_samples, n_features, generator=g) * present
    return coefficients @ features


def cosine_matrix(decoder: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """|cos| between every true feature and every decoder row, [n_features, d_sae]."""
    return (F.normalize(features, dim=1) @ F.normalize(decoder, dim=1).T).abs()


def mmcs(decoder: torch.Tensor, features: torch.Tensor) -> float:
    """Mean over true features of the best |cosine| with any decoder row."""
    return float(cosine_matrix(decoder, features).max(dim=1).values.mean())


def mcc(decoder: torch.Tensor, features: torch.Tensor) -> float:
    """Mean |cosine| of the one-to-one pairing of features and decoder rows that maximises the total."""
    similarity = cosine_matrix(decoder, features).double().numpy()
    rows, cols = hungarian(-similarity)
    return float(similarity[rows, cols].mean())


def hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of the rows of `cost` [n, m] (n <= m) to distinct columns.

    The Hungarian method with potentials (O(n^2 m)): rows are added one by one, and each is placed
    along the shortest augmenting path in the reduced costs, which the potentials keep non-negative.
    """
    n, m = cost.shape
    if n > m:
        cols, rows = hungarian(cost.T)
        order = np.argsort(rows)
        return rows[order], cols[order]
    u, v = np.zeros(n + 1), np.zeros(m + 1)  # potentials of rows and columns (1-based, 0 = virtual)
    match = np.zeros(m + 1, dtype=np.int64)  # match[j] = row assigned to column j (0 = free)
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            minv[1:][~used[1:]] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    assigned = np.nonzero(match[1:])[0]
    rows = match[1:][assigned] - 1
    order = np.argsort(rows)
    return rows[order], assigned[order]
