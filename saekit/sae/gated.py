"""
The Gated SAE (Rajamanoharan et al. 2024): decide *whether* a latent fires apart from *how much*.

An L1 penalty on f both selects latents and shrinks their values. The gated encoder splits the two
jobs between paths that share one matrix W (W_enc here):

    pi_gate = (x - b_dec) @ W + b_gate                     which latents fire
    pi_mag  = (x - b_dec) @ (W * exp(r_mag)) + b_mag       how strongly (a per-latent rescale)
    f = 1[pi_gate > 0] * ReLU(pi_mag)

The L1 penalty falls on ReLU(pi_gate) only, so magnitudes are not shrunk. The step function has no
gradient, so the gate learns through an auxiliary loss: ReLU(pi_gate) must itself reconstruct x
through a frozen (stop-gradient) copy of the decoder. Decoder rows have unit norm, as in the paper.

    L = ||x - x_hat||^2 + lambda ||ReLU(pi_gate)||_1 + ||x - (ReLU(pi_gate) @ sg(W_dec) + sg(b_dec))||^2
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from saekit.sae.base import SAE, SAEConfig, SAEOutput
from saekit.sae.sparse import chosen_values, sparse_decode


class GatedSAE(SAE):
    architecture = "gated"
    saelens_architecture = "gated"
    resamples_dead = True
    sparse_max_density = 0.15

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        del self.b_enc  # the gated encoder has two biases instead
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def encoder_bias(self) -> torch.Tensor:
        return -(self.b_dec @ self.W_enc)  # the shared part (x - b_dec) @ W has no bias of its own

    def _paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = F.linear(x, self.W_enc.T, self.encoder_bias())
        return shared + self.b_gate, shared * self.r_mag.exp() + self.b_mag

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self._paths(x)[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        gate, magnitude = self._paths(x)
        return (gate > 0) * F.relu(magnitude)

    def forward(self, x: torch.Tensor, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None) -> SAEOutput:
        bias = self.encoder_bias()
        shared = F.linear(x, self.W_enc.T, bias)
        gate = shared + self.b_gate
        coefficient = self.cfg.sparsity_coefficient * sparsity_scale / len(x)
        # a closed gate zeroes f and ReLU(pi_gate): no loss, no gradient
        sparse = self._active_entries(gate, 0.0)
        if sparse is None:
            f = (gate > 0) * F.relu(shared * self.r_mag.exp() + self.b_mag)
            x_hat = self.decode(f)
            active_gate = F.relu(gate)
            through_frozen_decoder = active_gate @ self.W_dec.detach() + self.b_dec.detach()
        else:  # the same loss and gradients from the open gates only
            chosen, flat = sparse
            cols = chosen.cols
            shared = chosen_values(shared.detach().take(flat), x, self.W_enc, bias, chosen)
            # index_select, not indexing: on a CPU the backward of indexing adds up repeated latents in a
            # varying order, index_select's in a fixed one (the same seed gives the same SAE)
            active_gate = F.relu(shared + self.b_gate.index_select(0, cols))
            f = F.relu(shared * self.r_mag.exp().index_select(0, cols) + self.b_mag.index_select(0, cols))
            x_hat = sparse_decode(f, chosen, self.W_dec) + self.b_dec
            through_frozen_decoder = sparse_decode(active_gate, chosen, self.W_dec.detach()) + self.b_dec.detach()
        losses = {"sparsity": coefficient * active_gate.sum(),
                  "gate_reconstruction": self.reconstruction_loss(x, through_frozen_decoder)}
        if sparse is None:
            return self._output(x, x_hat, f, **losses)
        losses = {"reconstruction": self.reconstruction_loss(x, x_hat), **losses}
        return self._chosen_output(x_hat, losses, chosen, f > 0)

    def _scale_latents(self, factor: torch.Tensor) -> None:
        # only the magnitude path sets the value of f; the gate's sign is unchanged by a positive factor
        self.r_mag.add_(factor.log())
        self.b_mag.mul_(factor)

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {"W_enc": self.W_enc, "b_gate": self.b_gate, "r_mag": self.r_mag, "b_mag": self.b_mag,
                "W_dec": self.W_dec, "b_dec": self.b_dec}
