"""
The small base every SAE architecture shares: parameters, encode/decode, loss terms, saving.

An SAE maps an activation x (width d_in) to a code f (width d_sae, mostly zeros) and back:

    f = act((x - b_dec) @ W_enc + b_enc)        x_hat = f @ W_dec + b_dec

Architectures differ in `act`, in their sparsity penalty and in how they keep the decoder in
shape; each lives in its own file and overrides `encode` and `forward`. Tensors follow SAELens's
conventions (W_enc [d_in, d_sae], W_dec [d_sae, d_in]), so saving is a matter of writing them out.

`forward(x)` returns an `SAEOutput`: the reconstruction, the loss terms by name, their weighted
sum, the mean L0 and how often each latent fired (for dead-latent tracking). Training happens in a scaled
space (mean ||x|| = sqrt(d_in)); `to_raw_space` folds the scaling constant, and decoder norms where
the architecture allows it, into the weights, so a saved SAE takes raw activations.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from saekit.sae.sparse import active_entries

ARCHITECTURES: dict[str, type[SAE]] = {}


@dataclass
class SAEConfig:
    """Everything that defines an SAE: its shape, architecture and sparsity settings, and where it reads."""

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None  # topk, batchtopk, matryoshka: active latents per token (on average for the batch kinds)
    sparsity_coefficient: float = 0.0  # relu (L1), gated (L1 of the gate), jumprelu (L0)
    decoder_norm_penalty: bool = True  # relu: April-2024 recipe (True) or classic unit-norm decoder (False)
    aux_k: int | None = None  # topk family: latents in the AuxK loss (default d_in // 2)
    aux_coefficient: float = 1 / 32
    jumprelu_bandwidth: float = 0.1  # jumprelu: width of the rectangle kernel (in scaled units)
    jumprelu_init_threshold: float = 0.5
    threshold_momentum: float = 0.9  # batchtopk, matryoshka: EMA of the smallest kept activation (fast: it drifts down)
    # matryoshka: widths of the nested prefixes, increasing, the last d_sae (None: d_sae/16, d_sae/4, d_sae)
    matryoshka_widths: list[int] | None = None
    hook_name: str = ""
    metadata: dict = field(default_factory=dict)  # model, store, training facts; saved under cfg.json's metadata

    def __post_init__(self):
        problems = []
        if self.architecture not in ARCHITECTURES:
            problems.append(f"architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}")
        if self.d_in <= 0 or self.d_sae <= 0:
            problems.append(f"d_in and d_sae must be positive, got {self.d_in} and {self.d_sae}")
        if self.architecture in ("topk", "batchtopk", "matryoshka"):
            if self.k is None or not 0 < self.k <= self.d_sae:
                problems.append(f"{self.architecture} needs 0 < k <= d_sae ({self.d_sae}), got k={self.k}")
            aux_k = self.aux_k if self.aux_k is not None else self.d_in // 2
            if not 0 < aux_k <= self.d_sae:
                problems.append(f"aux_k must be in 1..d_sae ({self.d_sae}), got {aux_k}")
        if self.sparsity_coefficient < 0 or self.aux_coefficient < 0:
            problems.append("sparsity_coefficient and aux_coefficient must not be negative, got "
                            f"{self.sparsity_coefficient} and {self.aux_coefficient}")
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            problems.append("jumprelu_bandwidth and jumprelu_init_threshold must be positive")
        if not 0 <= self.threshold_momentum < 1:
            problems.append(f"threshold_momentum must be in [0, 1), got {self.threshold_momentum}")
        if self.architecture == "matryoshka" and self.matryoshka_widths is None and self.d_sae > 0:
            self.matryoshka_widths = sorted({w for w in (self.d_sae // 16, self.d_sae // 4, self.d_sae) if w > 0})
        if isinstance(self.matryoshka_widths, tuple):  # a list, as it comes back from cfg.json
            self.matryoshka_widths = list(self.matryoshka_widths)
        widths = self.matryoshka_widths
        if widths is not None and self.architecture != "matryoshka":
            problems.append(f"matryoshka_widths is for architecture='matryoshka', not {self.architecture!r}")
        elif widths is not None:
            increasing = all(isinstance(w, int) and w > 0 for w in widths) and all(
                a < b for a, b in zip(widths, widths[1:]))
            if not (widths and increasing and widths[-1] == self.d_sae):
                problems.append(f"matryoshka_widths must be increasing positive integers ending at d_sae "
                                f"({self.d_sae}), got {widths}")
        if problems:
            raise ValueError("invalid SAEConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SAEConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown SAEConfig keys {sorted(unknown)}; expected some of {sorted(names)}")
        return cls(**data)


@dataclass
class SAEOutput:
    x_hat: torch.Tensor
    losses: dict[str, torch.Tensor]  # each term already weighted, so that `loss` is their sum
    loss: torch.Tensor
    l0: torch.Tensor  # mean number of active latents per token
    fire_counts: torch.Tensor  # long [d_sae]: on how many tokens of the batch each latent was active


class SAE(nn.Module):
    """Shared parameters and behaviour. Subclasses set the class attributes and override `encode`/`forward`."""

    architecture: str = ""  # saekit's name
    saelens_architecture: str = ""  # the name in SAELens's cfg.json
    unit_norm_decoder: bool = True  # decoder rows kept at unit norm during training
    resamples_dead: bool = False  # dead latents are resampled (Anthropic) rather than revived by AuxK
    # dense architectures: train on the active entries only (`saekit.sae.sparse`) while at most this
    # fraction of the code is nonzero; set where sparse and dense float32 steps cost the same on a 2-core
    # CPU (d_in 128, 2,048 latents, batches of 4,096: benchmarks/bench_sparse_steps.py)
    sparse_max_density: float = 0.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.architecture:
            ARCHITECTURES[cls.architecture] = cls

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} needs architecture={self.architecture!r}, "
                             f"got {cfg.architecture!r}")
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    # ------------------------------------------------------------------ setup

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, decoder_norm: float = 1.0) -> None:
        """Decoder rows: random directions of norm `decoder_norm`; encoder: the decoder's transpose;
        every vector parameter (biases, per-latent scales) zero."""
        directions = torch.randn(self.cfg.d_sae, self.cfg.d_in, generator=generator)
        self.W_dec.copy_(F.normalize(directions, dim=1) * decoder_norm)
        self.W_enc.copy_(self.W_dec.T)
        for p in self.parameters():
            if p.ndim == 1:
                p.zero_()

    # ------------------------------------------------------------------ the model

    def encoder_bias(self) -> torch.Tensor:
        """b_enc - b_dec @ W_enc, so that (x - b_dec) @ W_enc + b_enc = x @ W_enc + encoder_bias(): b_dec's
        gradient through the encoder is then one vector-matrix product instead of a [tokens x latents] by
        [latents x d_in] matmul (or, in a sparse step, a pass over every active entry), and the bias add is
        fused into the encoder's matmul."""
        return self.b_enc - self.b_dec @ self.W_enc

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.W_enc.T, self.encoder_bias())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return F.linear(f, self.W_dec.T, self.b_dec)  # f @ W_dec + b_dec

    def forward(self, x: torch.Tensor, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None) -> SAEOutput:
        """Reconstruct x and return the loss terms. `sparsity_scale` is the warm-up factor of the sparsity
        coefficient; `dead` (bool [d_sae]) marks the latents auxiliary losses should revive."""
        raise NotImplementedError

    def _sparse_density_limit(self, pre: torch.Tensor) -> float:
        """This architecture's break-even density for a step whose pre-activations are `pre`. Under autocast the
        dense matmuls ran in half precision, several times faster (about 4x for bfloat16 on a CPU with
        AVX512-BF16), while the sparse products stay float32: the break-even density is lower. Off the CPU,
        0: on a GPU dense matmuls are cheap, and listing the entries would wait for the device."""
        if pre.device.type != "cpu":
            return 0.0
        return self.sparse_max_density / 4 if pre.dtype != self.W_enc.dtype else self.sparse_max_density

    def _active_entries(self, pre: torch.Tensor, above: torch.Tensor | float):
        """`saekit.sae.sparse.active_entries` of `pre > above` at this architecture's break-even density,
        or None (train densely)."""
        limit = self._sparse_density_limit(pre)
        return active_entries(pre.detach() > above, limit) if limit > 0 else None

    @staticmethod
    def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Squared error summed over the activation's width, averaged over tokens."""
        return (x_hat - x).pow(2).sum(dim=-1).mean()

    def _output(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor, **losses: torch.Tensor) -> SAEOutput:
        losses = {"reconstruction": self.reconstruction_loss(x, x_hat), **losses}
        with torch.no_grad():  # codes are never negative: sign() is 1 where a latent fired (faster than f > 0 on CPU)
            fire_counts = f.sign().sum(dim=0).long()
        return self._result(x_hat, losses, fire_counts)

    def _chosen_output(self, x_hat: torch.Tensor, losses: dict[str, torch.Tensor], chosen,
                       active: torch.Tensor | None = None) -> SAEOutput:
        """The `SAEOutput` of a code held as a `saekit.sae.sparse.Chosen`; `active` marks its entries that
        fired (None: all of them)."""
        with torch.no_grad():
            weights = None if active is None else active.to(x_hat.dtype)
            fire_counts = torch.bincount(chosen.cols, weights, minlength=self.cfg.d_sae).long()
        return self._result(x_hat, losses, fire_counts)

    @staticmethod
    def _result(x_hat: torch.Tensor, losses: dict[str, torch.Tensor], fire_counts: torch.Tensor) -> SAEOutput:
        """The `SAEOutput` of these weighted loss terms and per-latent fire counts (long)."""
        return SAEOutput(x_hat, losses, sum(losses.values()), fire_counts.sum() / len(x_hat), fire_counts)

    # ------------------------------------------------------------------ keeping the decoder in shape

    def decoder_norms(self) -> torch.Tensor:
        return self.W_dec.norm(dim=1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (after each optimiser step, for unit-norm architectures)."""
        self.W_dec.div_(self.decoder_norms().clamp_min(1e-12)[:, None])

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the part of each decoder row's gradient that would only change its norm."""
        if self.W_dec.grad is None:
            return
        unit = F.normalize(self.W_dec, dim=1)
        self.W_dec.grad.sub_((self.W_dec.grad * unit).sum(dim=1, keepdim=True) * unit)

    # ------------------------------------------------------------------ raw space and saving

    @torch.no_grad()
    def to_raw_space(self, scale: float) -> SAE:
        """A copy that takes raw activations: trained on x * scale, it now reads x and writes x_hat / scale.

        Decoder norms are folded into the encoder too, where the architecture allows it, so the
        copy's decoder rows have unit norm and its latents are in units of their decoder direction.
        """
        raw = copy.deepcopy(self).eval()
        raw._fold_scale(scale)
        raw._fold_decoder_norms()
        return raw

    def _fold_scale(self, scale: float) -> None:
        # encoder input (x*s - b_dec) = s (x - b_dec/s): multiply W_enc by s; outputs divide by s
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    def _fold_decoder_norms(self) -> None:
        # f_i -> f_i * n_i and d_i -> d_i / n_i keep f @ W_dec unchanged for positively homogeneous codes
        norms = self.decoder_norms()
        self.W_dec.div_(norms[:, None])
        self._scale_latents(norms)

    def _scale_latents(self, factor: torch.Tensor) -> None:
        self.W_enc.mul_(factor)
        self.b_enc.mul_(factor)

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of `sae_weights.safetensors` (SAELens names and shapes)."""
        return {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}

    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in tensors.items():
                getattr(self, name).copy_(value)

    def saelens_config_extras(self) -> dict:
        return {}

    def extra_repr(self) -> str:
        return f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, hook={self.cfg.hook_name or '?'}"


def default_lr(d_sae: int) -> float:
    """Gao et al.'s learning-rate rule for TopK SAEs: 2e-4 / sqrt(d_sae / 2^14)."""
    return 2e-4 / math.sqrt(d_sae / 2**14)
