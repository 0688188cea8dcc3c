"""
The standard SAE: a ReLU code with an L1 penalty (Bricken et al. 2023; Anthropic's April 2024 update).

    f = ReLU((x - b_dec) @ W_enc + b_enc)

Two recipes, chosen by `cfg.decoder_norm_penalty`:

- April 2024 (default): the decoder is free, and the penalty weighs each latent by its decoder
  row's norm, L = ||x - x_hat||^2 + lambda * sum_i f_i ||d_i||, so shrinking f while growing d
  buys nothing. Decoder rows start at norm 0.1. The norms are folded into the encoder on export.
- classic (2023): L = ||x - x_hat||^2 + lambda * ||f||_1 with unit-norm decoder rows (renormalised
  after every step, the parallel part of their gradient removed) and dead latents resampled.

The L1 penalty shrinks every active latent towards zero, so reconstructions come out short of
their targets — the weakness Gated, TopK and JumpReLU SAEs were designed to fix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saekit.sae.base import SAE, SAEOutput
from saekit.sae.sparse import chosen_values, sparse_decode


class ReLUSAE(SAE):
    architecture = "relu"
    saelens_architecture = "standard"
    sparse_max_density = 0.15

    @property
    def unit_norm_decoder(self) -> bool:
        return not self.cfg.decoder_norm_penalty

    @property
    def resamples_dead(self) -> bool:
        return not self.cfg.decoder_norm_penalty

    def init_weights(self, generator: torch.Generator | None = None, decoder_norm: float | None = None) -> None:
        default = 0.1 if self.cfg.decoder_norm_penalty else 1.0
        super().init_weights(generator, default if decoder_norm is None else decoder_norm)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pre_activations(x))

    def forward(self, x: torch.Tensor, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None) -> SAEOutput:
        pre = self.pre_activations(x)
        coefficient = self.cfg.sparsity_coefficient * sparsity_scale / len(x)
        sparse = self._active_entries(pre, 0.0)
        if sparse is None:
            f = F.relu(pre)
            per_latent = f.sum(dim=0)
            l1 = per_latent @ self.decoder_norms() if self.cfg.decoder_norm_penalty else per_latent.sum()
            return self._output(x, self.decode(f), f, sparsity=coefficient * l1)
        chosen, flat = sparse  # only the positive pre-activations: the same loss and gradients, fewer products
        values = chosen_values(pre.detach().reshape(-1)[flat], x - self.b_dec, self.W_enc, self.b_enc, chosen)
        x_hat = sparse_decode(values, chosen, self.W_dec) + self.b_dec
        per_latent = values.new_zeros(self.cfg.d_sae).index_add(0, chosen.cols, values)
        l1 = per_latent @ self.decoder_norms() if self.cfg.decoder_norm_penalty else per_latent.sum()
        losses = {"reconstruction": self.reconstruction_loss(x, x_hat), "sparsity": coefficient * l1}
        return self._chosen_output(x_hat, losses, chosen)  # every entry fired: they are the positive ones
