"""
The BatchTopK SAE (Bussmann et al. 2024): the top k x batch_size activations of the whole batch.

A TopK SAE gives every token exactly k latents; BatchTopK keeps the largest k * n_tokens
(ReLU'd) pre-activations across the batch, so the average L0 is still k but a token with more
going on can use more latents than a simple one. A batch-level rule cannot run on a single token,
so training also learns a threshold theta, an exponential moving average of the smallest kept
activation; at inference (`eval()` mode) the SAE is a JumpReLU with that threshold for every
latent, and it is saved as one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from saekit.sae.base import SAE, SAEConfig, SAEOutput
from saekit.sae.sparse import Chosen
from saekit.sae.topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    saelens_architecture = "jumprelu"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(cfg.d_sae))  # one value for all latents until exported
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        if self.training:
            return self._batch_topk_dense(pre)
        return F.relu(pre) * (pre > self.threshold)

    def _batch_topk_dense(self, pre: torch.Tensor) -> torch.Tensor:
        flat = F.relu(pre).reshape(-1)
        kept = flat.topk(self.cfg.k * len(pre), sorted=False).indices
        return torch.zeros_like(flat).scatter(0, kept, flat[kept]).reshape(pre.shape)

    def forward(self, x: torch.Tensor, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None) -> SAEOutput:
        if not self.training:  # inference: the learned threshold
            f = self.encode(x)
            return self._output(x, self.decode(f), f)
        x_in = x - self.b_dec
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x_in, self.W_enc)
            acts = F.relu(pre)
            flat = self._batch_top(acts)
            self._update_threshold(acts.take(flat))
            chosen, values = Chosen.from_sorted_flat(flat, len(pre), self.cfg.d_sae), pre.take(flat)
        return self._sparse_output(x, x_in, pre, chosen, values, dead)

    def _batch_top(self, acts: torch.Tensor) -> torch.Tensor:
        """Increasing flat positions of the k * n_tokens largest entries of `acts` [n_tokens, d_sae]; of
        entries tied at the cutoff, the first ones.

        A topk over the whole flattened batch is slow on a CPU. The cutoff moves little from one batch
        to the next, so the candidates are the entries above 0.9 x the last batch's cutoff when there
        are at least k * n_tokens of them (and not too many); otherwise `_cutoff_of` finds the cutoff.
        Either way every entry at or above the cutoff is a candidate, and ties are broken by position,
        so the result does not depend on which way ran (a resumed run keeps no last cutoff).
        """
        n_keep = self.cfg.k * len(acts)
        guess = getattr(self, "_cutoff", None)
        candidates = None if guess is None else acts > guess
        if candidates is None or not n_keep <= int(candidates.count_nonzero()) <= 2 * n_keep:
            candidates = acts >= self._cutoff_of(acts, n_keep)
            most = int(candidates.sum(dim=-1).max())  # entries at or above the cutoff on the fullest token
            self._width = max(4 * self.cfg.k, 1 << math.ceil(math.log2(1.5 * most + 1)))
        flat = candidates.reshape(-1).nonzero().squeeze(1)
        values = acts.take(flat)
        cutoff = values.topk(n_keep, sorted=False).values.min()
        above, tied = values > cutoff, values == cutoff
        keep = above | (tied & (tied.cumsum(0) <= n_keep - above.count_nonzero()))
        self._cutoff = 0.9 * float(cutoff)
        return flat[keep]

    def _cutoff_of(self, acts: torch.Tensor, n_keep: int) -> torch.Tensor:
        """The n_keep-th largest entry of `acts`: the n_keep-th largest of each token's `width` largest, unless
        some token has all its candidates at or above that value (it might hold more), in which case a topk
        of the whole batch. `width` (set by `_batch_top`) follows the most entries any token kept last time."""
        d_sae = acts.shape[1]
        width = min(d_sae, getattr(self, "_width", 4 * self.cfg.k))
        candidates = acts.topk(width, dim=-1, sorted=False).values
        cutoff = candidates.reshape(-1).topk(n_keep, sorted=False).values.min()
        if width < d_sae and (candidates.min(dim=-1).values >= cutoff).any():
            cutoff = acts.reshape(-1).topk(n_keep, sorted=False).values.min()
        return cutoff

    @torch.no_grad()
    def _update_threshold(self, kept_values: torch.Tensor) -> None:
        positive = kept_values[kept_values > 0]
        if not len(positive):
            return
        momentum = self.cfg.threshold_momentum if self.threshold_updates > 0 else 0.0
        self.threshold.fill_(momentum * float(self.threshold[0]) + (1 - momentum) * float(positive.min()))
        self.threshold_updates += 1

    # at inference a fixed threshold, not a rank, decides what fires: folding norms is safe again
    _fold_decoder_norms = SAE._fold_decoder_norms

    def _scale_latents(self, factor: torch.Tensor) -> None:
        super()._scale_latents(factor)
        self.threshold.mul_(factor)

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(), "threshold": self.threshold}

    def saelens_config_extras(self) -> dict:
        return {}
