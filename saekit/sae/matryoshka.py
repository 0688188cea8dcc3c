"""
The Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025; Nabeshima 2024): nested dictionaries.

The latents are ordered and cut into nested prefixes of widths m_1 < m_2 < ... < m_n = d_sae
(`matryoshka_widths`). Activations are chosen as in BatchTopK, over the whole dictionary, and each
prefix must reconstruct x on its own, from its latents alone:

    x_hat_m = f[:, :m] @ W_dec[:m] + b_dec          L = sum over m of ||x - x_hat_m||^2  (+ AuxK)

The sum follows the paper's loss and SAELens's `MatryoshkaBatchTopKTrainingSAE` (Bussmann's reference
code averages over prefixes instead, which only rescales the loss). The intent: in a plain SAE a
latent for "cat" can take over the "animal" direction on cat tokens, so that the "animal" latent
stops firing there (feature absorption, see `saekit.absorption`). In a Matryoshka SAE an early
latent must reconstruct every animal token without the later "cat" latent's help, so the general
feature should stay general and later latents add what is specific (notebook 09 measures it).

Everything else is BatchTopK's: k x batch-size activations per batch, AuxK on the whole
dictionary's residual for dead latents, a learned threshold that makes the SAE a JumpReLU at
inference, and saved as one (as SAELens saves it); the widths are kept in saekit's metadata.
"""

from __future__ import annotations

import torch

from saekit.sae.batchtopk import BatchTopKSAE
from saekit.sae.sparse import Chosen, sparse_decode


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"

    def _reconstruction_losses(self, x: torch.Tensor, x_hat: torch.Tensor, values: torch.Tensor,
                               chosen: Chosen) -> dict[str, torch.Tensor]:
        losses = {"reconstruction": self.reconstruction_loss(x, x_hat)}  # the whole dictionary: the last prefix
        for width in self.cfg.matryoshka_widths[:-1]:
            inner = sparse_decode(values * (chosen.cols < width), chosen, self.W_dec) + self.b_dec
            losses[f"reconstruction_{width}"] = self.reconstruction_loss(x, inner)
        return losses
