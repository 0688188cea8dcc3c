"""
The JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope): a per-latent threshold, and a true L0 penalty.

    f = h * 1[h > theta],    h = (x - b_dec) @ W_enc + b_enc,    theta = exp(log_threshold)
    L = ||x - x_hat||^2 + lambda * sum_i 1[h_i > theta_i]

Below its threshold a latent is exactly zero; above it, it passes h unshrunk. Neither the step
nor the L0 count has a useful derivative, so both use straight-through estimators with a
rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth eps (only pre-activations within eps/2 of the
threshold send it a gradient):

    df/dh = 1[h > theta]          df/dtheta = -(theta/eps) K((h - theta)/eps)
    dL0/dh = 0                    dL0/dtheta = -(1/eps) K((h - theta)/eps)

The log-threshold is a float32 parameter (theta must stay positive, and its updates are tiny).
Decoder rows have unit norm. Saved with the threshold itself, not its log, as SAELens expects.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from saekit.sae.base import SAE, SAEConfig, SAEOutput
from saekit.sae.sparse import chosen_values, sparse_decode


def _rectangle(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold / ctx.bandwidth) * _rectangle(pre, threshold, ctx.bandwidth) * grad
        return grad_pre, grad_threshold.sum_to_size(threshold.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(1 / ctx.bandwidth) * _rectangle(pre, threshold, ctx.bandwidth) * grad
        return None, grad_threshold.sum_to_size(threshold.shape), None


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    saelens_architecture = "jumprelu"
    sparse_max_density = 0.15

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold),
                                                     dtype=torch.float32))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def init_weights(self, generator: torch.Generator | None = None, decoder_norm: float = 1.0) -> None:
        super().init_weights(generator, decoder_norm)
        with torch.no_grad():
            self.log_threshold.fill_(math.log(self.cfg.jumprelu_init_threshold))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        return pre * (pre > self.threshold)

    def forward(self, x: torch.Tensor, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None) -> SAEOutput:
        bias = self.encoder_bias()
        pre = F.linear(x, self.W_enc.T, bias)
        threshold, bandwidth = self.threshold, self.cfg.jumprelu_bandwidth
        coefficient = self.cfg.sparsity_coefficient * sparsity_scale / len(x)
        # pre-activations at or below theta - eps/2 give f = 0, count nothing and send no gradient
        sparse = self._active_entries(pre, threshold.detach() - bandwidth / 2)
        if sparse is None:
            f = _JumpReLU.apply(pre, threshold, bandwidth)
            l0 = _Step.apply(pre, threshold, bandwidth).sum()
            return self._output(x, self.decode(f), f, sparsity=coefficient * l0)
        chosen, flat = sparse  # the same loss and gradients from the entries that can fire or move theta
        values = chosen_values(pre.detach().take(flat), x, self.W_enc, bias, chosen)
        thresholds = threshold.index_select(0, chosen.cols)  # not indexing: see GatedSAE.forward
        f = _JumpReLU.apply(values, thresholds, bandwidth)
        l0 = _Step.apply(values, thresholds, bandwidth).sum()
        x_hat = sparse_decode(f, chosen, self.W_dec) + self.b_dec
        losses = {"reconstruction": self.reconstruction_loss(x, x_hat), "sparsity": coefficient * l0}
        return self._chosen_output(x_hat, losses, chosen, f > 0)

    def _scale_latents(self, factor: torch.Tensor) -> None:
        super()._scale_latents(factor)
        self.log_threshold.add_(factor.log())

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().saelens_tensors(), "threshold": self.threshold}

    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        threshold = tensors.pop("threshold")
        if (threshold <= 0).any():
            raise ValueError("a JumpReLU threshold must be positive to be stored as a log-threshold; "
                             f"found {int((threshold <= 0).sum())} non-positive values")
        super().load_saelens_tensors(tensors)
        with torch.no_grad():
            self.log_threshold.copy_(threshold.float().log())
