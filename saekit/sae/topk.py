"""
The TopK SAE (Gao et al. 2024): keep the k largest pre-activations of each token, nothing else.

    f = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc))

Sparsity is set directly by k, so there is no penalty to tune and no shrinkage. Decoder rows stay
at unit norm (the parallel part of their gradient is removed, then they are renormalised).
Training decodes sparsely (see `saekit.sae.sparse`): after the encoder's matmul only k latents per
token cost anything.

Dead latents are revived by AuxK: the top `aux_k` dead latents try to reconstruct the detached
residual x - x_hat, decoded without b_dec (two bugs other libraries shipped: a residual that is
not detached, and b_dec added to the auxiliary reconstruction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from saekit.sae.base import SAE, SAEOutput
from saekit.sae.sparse import Chosen, auxk_loss, chosen_values, sparse_decode


class TopKSAE(SAE):
    architecture = "topk"
    saelens_architecture = "topk"

    @property
    def aux_k(self) -> int:
        return self.cfg.aux_k if self.cfg.aux_k is not None else self.cfg.d_in // 2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))

    def forward(self, x: torch.Tensor, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None) -> SAEOutput:
        x_in = x - self.b_dec
        with torch.no_grad():  # scores for every latent; only the chosen ones enter the graph
            pre = torch.addmm(self.b_enc, x_in, self.W_enc)
            top = pre.topk(self.cfg.k, dim=-1, sorted=False)
            chosen, values = Chosen.per_token(top.indices, top.values, self.cfg.d_sae)
        return self._sparse_output(x, x_in, pre, chosen, values, dead)

    def _sparse_output(self, x, x_in, pre, chosen: Chosen, pre_values: torch.Tensor, dead) -> SAEOutput:
        values = F.relu(chosen_values(pre_values, x, self.W_enc, self.encoder_bias(), chosen))
        x_hat = sparse_decode(values, chosen, self.W_dec) + self.b_dec
        losses = self._reconstruction_losses(x, x_hat, values, chosen)
        if dead is not None:
            losses["auxk"] = auxk_loss(x_in.detach(), pre, self.W_enc, self.b_enc, self.W_dec, (x - x_hat).detach(),
                                       dead, self.aux_k, self.cfg.aux_coefficient)
        return self._chosen_output(x_hat, losses, chosen, values > 0)

    def _reconstruction_losses(self, x: torch.Tensor, x_hat: torch.Tensor, values: torch.Tensor,
                               chosen: Chosen) -> dict[str, torch.Tensor]:
        """The reconstruction term(s) of the loss (Matryoshka adds one per nested prefix of the dictionary)."""
        return {"reconstruction": self.reconstruction_loss(x, x_hat)}

    def _fold_decoder_norms(self) -> None:
        # Folding *unequal* norms into the encoder would change which k latents win (SAELens refuses it
        # too), so an imported SAE with uneven rows keeps them. saekit's TopK decoders have equal rows
        # (unit norm, divided by the scaling constant), and scaling every score alike keeps the ranking.
        norms = self.decoder_norms()
        if float(norms.max() / norms.min()) < 1 + 1e-4:
            super()._fold_decoder_norms()

    def saelens_config_extras(self) -> dict:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
