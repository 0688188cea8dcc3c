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
from saekit.sae.sparse import Chosen, chosen_values, sparse_decode


class ReLUSAE(SAE):
    architecture = "relu"
    saelens_architecture = "standard"
    sparse_max_density = 0.05

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
        bias = self.encoder_bias()
        x_ones, W_ones = _ones_column(x), torch.cat([self.W_enc, bias[None]])  # the bias as one more input row
        with torch.no_grad():  # the code's gradient path is built by hand below, dense or sparse
            f = (x_ones @ W_ones).relu_()
            fired = f.sign().float()  # 1 where the latent fired (codes are never negative); float: exact counts
            fire_counts = torch.mv(fired.t(), fired.new_ones(len(x)))
        # each latent's L1 weight: its decoder norm (April 2024) or 1 (classic)
        weights = self.decoder_norms() if self.cfg.decoder_norm_penalty else bias.new_ones(self.cfg.d_sae)
        coefficient = self.cfg.sparsity_coefficient * sparsity_scale / len(x)
        # each token's weighted L1 comes out of the decoder as one more column
        decoder = torch.cat([self.W_dec, weights[:, None]], dim=1)
        limit = self._sparse_density_limit(f)
        if limit == 0 or fire_counts.sum() > limit * f.numel():  # (the limit first: no wait for a GPU)
            out = _DenseReLUDecode.apply(f, fired, x_ones, W_ones, decoder)
        else:  # only the positive entries: the same loss and gradients, fewer products
            chosen, flat = Chosen.from_mask(f.bool())
            out = sparse_decode(chosen_values(f.take(flat), x, self.W_enc, bias, chosen), chosen, decoder)
        fire_counts = fire_counts.long()
        x_hat = out[:, :-1] + self.b_dec
        losses = {"reconstruction": self.reconstruction_loss(x, x_hat), "sparsity": coefficient * out[:, -1].sum()}
        return self._result(x_hat, losses, fire_counts)


def _ones_column(t: torch.Tensor) -> torch.Tensor:
    """[n, d] -> [n, d + 1], the last column ones: a bias becomes one more row of the weight matrix, and its
    add (and its gradient's sum over tokens) happens inside the matmul."""
    return torch.cat([t, t.new_ones(len(t), 1)], dim=1)


class _DenseReLUDecode(torch.autograd.Function):
    """A dense ReLU step after the encoder's matmul: from the code f = ReLU(x_ones @ W_ones) and `fired`
    (1.0 where f > 0), both computed without gradient, returns f @ decoder, differentiable in x_ones,
    W_ones and decoder.

    Plain autograd would pass over the [tokens x latents] code several more times than the three
    matmuls need: to sum each bias's gradient, to sum the L1 penalty, and to broadcast the penalty's
    gradient and add it to the decoder's. Here the ones column of x_ones makes the encoder bias's
    gradient part of a matmul, as the L1 weights' column of the decoder does for the penalty and its
    gradient; ReLU's mask is one multiplication."""

    @staticmethod
    def forward(ctx, f, fired, x_ones, W_ones, decoder):
        ctx.save_for_backward(f, fired, x_ones, W_ones, decoder)
        return f @ decoder

    @staticmethod
    def backward(ctx, grad_out):
        f, fired, x_ones, W_ones, decoder = ctx.saved_tensors
        dtype = f.dtype  # under autocast the encoder's matmul ran in half precision: so does the backward
        grad_out = grad_out.to(dtype)
        grad_pre = (grad_out @ decoder.to(dtype).t()).mul_(fired)  # d/df, then ReLU's mask
        grad_x_ones = grad_pre @ W_ones.to(dtype).t() if ctx.needs_input_grad[2] else None
        grad_W_ones = x_ones.to(dtype).t() @ grad_pre if ctx.needs_input_grad[3] else None
        grad_decoder = (grad_out.t() @ f).t()  # this order of the product is the faster one on a CPU
        return None, None, grad_x_ones, grad_W_ones, grad_decoder
