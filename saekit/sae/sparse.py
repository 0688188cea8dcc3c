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

The dense architectures (ReLU, JumpReLU, Gated) train the same way on a CPU once their codes are
sparse: `active_entries` lists the nonzero entries of a batch's code when they are few enough
(each architecture's `sparse_max_density`) for the sparse products to beat dense matmuls. A latent
that is zero on a token gets no gradient there, so both paths compute the same loss and gradients,
summed in a different order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(eq=False)
class Chosen:
    """The latents kept for a batch: entry j is latent cols[j] of token rows[j], sorted by token and,
    within a token, by latent (so the entries are also a valid CSR matrix)."""

    rows: torch.Tensor
    cols: torch.Tensor
    offsets: torch.Tensor  # [n_tokens]: index of each token's first entry
    d_sae: int
    _by_latent: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def per_token(cls, indices: torch.Tensor, values: torch.Tensor, d_sae: int) -> tuple[Chosen, torch.Tensor]:
        """From [n_tokens, k] indices (the same number per token) and their values (reordered with them)."""
        n, k = indices.shape
        indices, order = indices.sort(dim=-1)
        rows = torch.arange(n, device=indices.device).repeat_interleave(k)
        offsets = torch.arange(0, n * k, k, device=indices.device)
        return cls(rows, indices.reshape(-1), offsets, d_sae), values.gather(1, order).reshape(-1)

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> tuple[Chosen, torch.Tensor]:
        """The True entries of a [n_tokens, d_sae] mask, and their positions in the flattened mask."""
        flat = mask.reshape(-1).nonzero().squeeze(1)
        return cls.from_sorted_flat(flat, *mask.shape), flat

    @classmethod
    def from_sorted_flat(cls, flat: torch.Tensor, n_tokens: int, d_sae: int) -> Chosen:
        """From increasing positions in the flattened [n_tokens, d_sae] matrix."""
        rows = torch.div(flat, d_sae, rounding_mode="floor")
        return cls(rows, flat - rows * d_sae, _starts(torch.bincount(rows, minlength=n_tokens)), d_sae)

    def by_latent(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The entries regrouped by latent: the permutation, their tokens in that order, and where each
        latent's group starts. Computed once per batch, shared by the encoder's and the decoder's backward."""
        if self._by_latent is None:
            # sorting narrow integers is about twice as fast on a CPU
            keys = self.cols.to(torch.int16 if self.d_sae <= torch.iinfo(torch.int16).max else torch.int32)
            order = torch.argsort(keys, stable=True)
            starts = _starts(torch.bincount(self.cols, minlength=self.d_sae))
            self._by_latent = order, self.rows.index_select(0, order), starts
        return self._by_latent

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        ends = self.offsets.new_full((1,), len(self.cols))
        with warnings.catch_warnings():  # torch calls its sparse CSR support beta; the sampled matmul is tested here
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(torch.cat([self.offsets, ends]), self.cols, values,
                                           (len(self.offsets), self.d_sae), check_invariants=False)

    def sum_by_latent(self, dense: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[d_sae, width]: for each latent c, the sum over its entries j of weights[j] * dense[rows[j]]."""
        order, rows, starts = self.by_latent()
        return F.embedding_bag(rows, dense, starts, mode="sum", per_sample_weights=weights.index_select(0, order))


def _starts(counts: torch.Tensor) -> torch.Tensor:
    """Where each group starts, given the groups' sizes in order."""
    return torch.cumsum(counts, 0) - counts


def active_entries(mask: torch.Tensor, max_density: float) -> tuple[Chosen, torch.Tensor] | None:
    """`Chosen.from_mask(mask)`, or None when more than `max_density` of the mask is True."""
    return None if mask.count_nonzero() > max_density * mask.numel() else Chosen.from_mask(mask)


class _ChosenPreActivations(torch.autograd.Function):
    """Values of the chosen pre-activations, with a backward that touches only the chosen latents."""

    @staticmethod
    def forward(ctx, values, x_in, W_enc, b_enc, chosen):
        ctx.save_for_backward(x_in, W_enc)
        ctx.chosen = chosen
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        x_in, W_enc = ctx.saved_tensors
        chosen = ctx.chosen
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_x = F.embedding_bag(chosen.cols, W_enc.t().contiguous(), chosen.offsets, mode="sum",
                                     per_sample_weights=grad)
        if ctx.needs_input_grad[2]:
            grad_W = chosen.sum_by_latent(x_in, grad).t()
        if ctx.needs_input_grad[3]:
            grad_b = torch.zeros(chosen.d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, chosen.cols, grad)
        return None, grad_x, grad_W, grad_b, None


def chosen_values(values: torch.Tensor, x_in: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor | None,
                  chosen: Chosen) -> torch.Tensor:
    """The chosen pre-activations (computed without gradient, in `chosen`'s order) made differentiable
    functions of x_in, W_enc and b_enc (None: an encoder without that bias). In the parameters' dtype:
    under autocast the encoder's matmul may have run in bfloat16, but the chosen values are few and the
    sparse products want one dtype."""
    return _ChosenPreActivations.apply(values.to(W_enc.dtype), x_in.to(W_enc.dtype), W_enc, b_enc, chosen)


class _SparseDecode(torch.autograd.Function):
    """x_hat[t] = sum over token t's entries of value_j * W_dec[col_j]; the backward computes the
    values' gradient only at the chosen entries (a sampled matmul) and W_dec's by latent."""

    @staticmethod
    def forward(ctx, values, W_dec, chosen):
        ctx.save_for_backward(values, W_dec)
        ctx.chosen = chosen
        return F.embedding_bag(chosen.cols, W_dec, chosen.offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad):
        values, W_dec = ctx.saved_tensors
        chosen = ctx.chosen
        grad = grad.to(W_dec.dtype)
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:  # <grad[row_j], W_dec[col_j]> for every entry j
            grad_values = torch.sparse.sampled_addmm(chosen.csr(values), grad, W_dec.t(), beta=0).values()
        if ctx.needs_input_grad[1]:
            grad_W = chosen.sum_by_latent(grad, values)
        return grad_values, grad_W, None


def sparse_decode(values: torch.Tensor, chosen: Chosen, W_dec: torch.Tensor) -> torch.Tensor:
    """sum over each token's entries of value * W_dec[col] (no bias): [n_tokens, d_in]."""
    if values.device.type != "cpu":  # GPUs: embedding_bag's own backward
        return F.embedding_bag(chosen.cols, W_dec, chosen.offsets, mode="sum", per_sample_weights=values)
    return _SparseDecode.apply(values, W_dec, chosen)


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
    chosen, values = Chosen.per_token(top.indices, top.values, W_enc.shape[1])
    # the raw pre-activations, not ReLU'd: a dead latent's are often all negative, and must still learn
    values = chosen_values(values, x_in_detached, W_enc, b_enc, chosen)
    predicted = sparse_decode(values, chosen, W_dec)
    variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
    error = (predicted - residual).pow(2).sum(dim=-1).mean()
    return coefficient * min(n_dead / aux_k, 1.0) * error / variance
