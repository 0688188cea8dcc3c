"""
Sparse encoding and decoding for the TopK family: only the chosen latents cost anything.

A TopK SAE keeps k of d_sae latents per token. The encoder's forward matmul must still score every
latent (to find the top k), but nothing after it needs the others: the decoder reads k rows of
W_dec per token, and the gradients of W_dec, W_enc and b_enc touch only the chosen k columns.
Dense autograd would instead push a [tokens, d_sae] gradient through two full matmuls.

Chosen entries are a COO list sorted by token: `rows` (token index), `cols` (latent index) and
`offsets` (where each token's entries start). Both directions then run on `embedding_bag`, whose
per-sample weights are the latent values:

- decode: x_hat[t] = sum_j value_j * W_dec[col_j] over token t's entries;
- the encoder's backward: grad x[t] = sum_j g_j * W_enc[:, col_j], and grad W_enc[:, c] =
  sum over entries with col c of g_j * x[row_j] (entries regrouped by latent).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Chosen:
    """The latents kept for a batch: entry j is latent cols[j] of token rows[j] (sorted by token)."""

    rows: torch.Tensor
    cols: torch.Tensor
    offsets: torch.Tensor  # [n_tokens]: index of each token's first entry

    @classmethod
    def per_token(cls, indices: torch.Tensor) -> Chosen:
        """From [n_tokens, k] indices (the same number per token)."""
        n, k = indices.shape
        rows = torch.arange(n, device=indices.device).repeat_interleave(k)
        return cls(rows, indices.reshape(-1), torch.arange(0, n * k, k, device=indices.device))

    @classmethod
    def from_flat(cls, flat: torch.Tensor, values: torch.Tensor, n_tokens: int, d_sae: int
                  ) -> tuple[Chosen, torch.Tensor]:
        """From positions in the flattened [n_tokens, d_sae] matrix and their values (both reordered by token)."""
        flat, order = flat.sort()
        rows, cols = flat // d_sae, flat % d_sae
        counts = torch.bincount(rows, minlength=n_tokens)
        return cls(rows, cols, torch.cumsum(counts, 0) - counts), values[order]


class _ChosenPreActivations(torch.autograd.Function):
    """Values of the chosen pre-activations, with a backward that touches only the chosen latents."""

    @staticmethod
    def forward(ctx, values, x_in, W_enc, b_enc, rows, cols, offsets):
        ctx.save_for_backward(x_in, W_enc, rows, cols, offsets)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x_in, W_enc, rows, cols, offsets = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_x = F.embedding_bag(cols, W_enc.t().contiguous(), offsets, mode="sum", per_sample_weights=grad)
        if ctx.needs_input_grad[2]:
            by_latent = torch.argsort(cols, stable=True)
            counts = torch.bincount(cols, minlength=d_sae)
            grad_W = F.embedding_bag(rows[by_latent], x_in, torch.cumsum(counts, 0) - counts, mode="sum",
                                     per_sample_weights=grad[by_latent]).t()
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        return None, grad_x, grad_W, grad_b, None, None, None


def chosen_values(values: torch.Tensor, x_in: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                  chosen: Chosen) -> torch.Tensor:
    """The chosen pre-activations (computed without gradient, in `chosen`'s order) made differentiable
    functions of x_in, W_enc and b_enc. In the parameters' dtype: under autocast the encoder's matmul
    may have run in bfloat16, but the k chosen values are few and the sparse products want one dtype."""
    return _ChosenPreActivations.apply(values.to(W_enc.dtype), x_in.to(W_enc.dtype), W_enc, b_enc, chosen.rows,
                                       chosen.cols, chosen.offsets)


def sparse_decode(values: torch.Tensor, chosen: Chosen, W_dec: torch.Tensor) -> torch.Tensor:
    """sum over each token's entries of value * W_dec[col] (no bias): [n_tokens, d_in]."""
    return F.embedding_bag(chosen.cols, W_dec, chosen.offsets, mode="sum", per_sample_weights=values)


def auxk_loss(x_in_detached: torch.Tensor, pre: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
              W_dec: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int,
              coefficient: float) -> torch.Tensor:
    """AuxK (Gao et al.): dead latents learn to predict what the live ones missed.

    The top `aux_k` pre-activations among dead latents (as they are, without ReLU) reconstruct the
    (detached) residual x - x_hat, decoded without b_dec; the loss is normalised by the residual's
    variance and scaled
    down while fewer than aux_k latents are dead. Only dead latents' weights get a gradient: the
    encoder input is detached, so b_dec gets none either.
    """
    n_dead = int(dead.sum())
    if n_dead == 0 or coefficient == 0:
        return pre.new_zeros(())
    k = min(aux_k, n_dead)
    top = pre.masked_fill(~dead, float("-inf")).topk(k, dim=-1, sorted=False)
    chosen = Chosen.per_token(top.indices)
    # the raw pre-activations, not ReLU'd: a dead latent's are often all negative, and must still learn
    values = chosen_values(top.values.reshape(-1), x_in_detached, W_enc, b_enc, chosen)
    predicted = sparse_decode(values, chosen, W_dec)
    variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
    error = (predicted - residual).pow(2).sum(dim=-1).mean()
    return coefficient * min(n_dead / aux_k, 1.0) * error / variance
