"""
Training SAEs: one loop for every architecture, several SAEs per pass over the activations.

Per step, for each SAE:

1. the batch (already scaled so that mean ||x|| = sqrt(d_in)) goes through `sae(x, ...)`, which
   returns its loss terms; the sparsity coefficient warms up linearly over the first steps;
2. backward; for unit-norm decoders the gradient's component along each decoder row is removed;
   the gradient is clipped; Adam (float32 parameters) steps with a learning rate that warms up
   linearly and decays linearly to zero over the last `lr_decay_fraction` of training;
3. unit-norm decoders are renormalised; each latent's "tokens since it last fired" is updated
   (latents silent for `dead_window_tokens` are dead: AuxK revives them in the TopK family, and
   Anthropic-style resampling does at set fractions of training for ReLU and Gated SAEs).

With `autocast="bfloat16"` the SAE's forward runs under `torch.autocast`: its big [tokens x latents]
matmuls in bfloat16, while parameters, gradients and Adam stay float32 (mixed precision, as on GPUs).
On CPUs with AVX512-BF16 those matmuls are several times faster, at the same explained variance
(`benchmarks/bench_train.py`); results are then deterministic per machine but not equal to float32's.

b_dec starts at the geometric median (or mean) of the first batch. Every `checkpoint_every` steps the
complete state — SAEs, optimisers, trackers, random generators, history — is written atomically;
`train_saes` finds it and continues, and since batch k of the data depends only on (seed, k), a
resumed run ends bit-identical to an uninterrupted one on the same CPU.

Data comes from an `ActivationStore` (or anything with `batches(batch_size, seed=, start=)` and
`scaling_factor()`), e.g. `saekit.store.ActivationStream` to train straight from the model.

Under `torchrun`, `distributed=saekit.distributed.init_distributed()` trains data-parallel: each
rank takes its slice of the same global batch, DDP averages the gradients, and batch statistics are
reduced across ranks, so the result equals one process with the same global batch (BatchTopK and
Matryoshka aside; see `saekit.distributed`).
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm  # text on stderr: notebooks stay comparable under nbval

from saekit.allocator import reuse_freed_memory
from saekit.sae.base import SAE, SAEOutput, default_lr
from saekit.sae.batchtopk import BatchTopKSAE
from saekit.sae.io import save_sae

if TYPE_CHECKING:
    from saekit.distributed import Distributed

CHECKPOINT = "checkpoint.pt"
DEFAULT_LR = {"relu": 1e-3, "gated": 1e-3, "jumprelu": 1e-3}  # TopK family: default_lr(d_sae)


SAE_INIT_SEED_OFFSET = 1_000_003


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4096
    lr: float | None = None  # None: 2e-4 / sqrt(d_sae / 2^14) for the TopK family, DEFAULT_LR otherwise
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_steps: int = 50
    lr_decay_fraction: float = 0.2
    sparsity_warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    b_dec_init: str = "geometric_median"  # "geometric_median", "mean" or "zero"
    dead_window_tokens: int | None = None  # None: a tenth of the training tokens, at most 10M
    resample_at: tuple[float, ...] = (0.25, 0.5, 0.75)  # fractions of training (resampling architectures)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    autocast: str | None = None  # "bfloat16": the SAE's forward under torch.autocast, parameters and Adam in float32

    def __post_init__(self):
        problems = []
        if self.steps <= 0 or self.batch_size <= 0:
            problems.append(f"steps and batch_size must be positive, got {self.steps} and {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.b_dec_init not in ("geometric_median", "mean", "zero"):
            problems.append(f"b_dec_init must be 'geometric_median', 'mean' or 'zero', got {self.b_dec_init!r}")
        if not 0 <= self.lr_decay_fraction <= 1 or not 0 <= self.sparsity_warmup_fraction <= 1:
            problems.append("lr_decay_fraction and sparsity_warmup_fraction must be in [0, 1]")
        if self.grad_clip <= 0:
            problems.append(f"grad_clip must be positive, got {self.grad_clip}")
        if self.checkpoint_every and not self.checkpoint_dir:
            problems.append("checkpoint_every needs a checkpoint_dir")
        if self.autocast not in (None, "bfloat16", "float16"):
            problems.append(f"autocast must be None, 'bfloat16' or 'float16', got {self.autocast!r}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size

    @property
    def dead_window(self) -> int:
        if self.dead_window_tokens is not None:
            return self.dead_window_tokens
        return min(10_000_000, max(self.batch_size, self.tokens // 10))


@dataclass
class TrainResult:
    sae: SAE
    scale: float  # the scaling constant the SAE was trained with (folded in on save)
    history: dict[str, list[float]]
    fire_counts: torch.Tensor  # tokens each latent fired on over the whole run
    tokens_since_fired: torch.Tensor
    tokens: int
    dead_window: int

    @property
    def dead_fraction(self) -> float:
        """Latents that did not fire in the last `dead_window` tokens of training."""
        return float((self.tokens_since_fired >= self.dead_window).float().mean())

    def raw_sae(self) -> SAE:
        """The trained SAE with the scaling constant (and decoder norms) folded in: it reads raw activations."""
        return self.sae.to_raw_space(self.scale)

    @property
    def firing_frequency(self) -> torch.Tensor:
        return self.fire_counts.double() / max(1, self.tokens)

    def save(self, path: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
        """The trained SAE as a raw-space SAELens folder, with firing frequencies and training facts."""
        facts = {"training": {"tokens": self.tokens, "dead_fraction": self.dead_fraction,
                              "final": {k: v[-1] for k, v in self.history.items() if v}}}
        return save_sae(self.sae, path, self.scale, self.firing_frequency, {**facts, **(extra_metadata or {})})


class _Trainer:
    """One SAE's optimiser, schedules and dead-latent tracking (the same on every rank of a distributed run)."""

    def __init__(self, sae: SAE, cfg: TrainConfig, distributed: Distributed | None = None):
        self.sae, self.cfg, self.distributed = sae, cfg, distributed
        self.wrapped = sae if distributed is None else distributed.wrap(sae)  # what the training forward calls
        lr = cfg.lr or (default_lr(sae.cfg.d_sae) if sae.architecture in ("topk", "batchtopk", "matryoshka")
                        else DEFAULT_LR[sae.architecture])
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=cfg.betas)
        self.base_lr = lr
        d_sae = sae.cfg.d_sae
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long)
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.history: dict[str, list[float]] = {}
        points = sorted({int(f * cfg.steps) for f in cfg.resample_at}) if sae.resamples_dead else []
        self.resample_steps = set(points)
        # as Anthropic did: resample latents silent for half the interval between resamplings (or longer)
        gaps = [b - a for a, b in zip([0, *points], points)]
        self.resample_window = max(cfg.dead_window, min(gaps, default=0) * cfg.batch_size // 2)

    def lr_at(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / max(1, self.cfg.lr_warmup_steps))
        decay_steps = int(self.cfg.steps * self.cfg.lr_decay_fraction)
        decay = min(1.0, (self.cfg.steps - step) / decay_steps) if decay_steps else 1.0
        return self.base_lr * warmup * decay

    def sparsity_scale(self, step: int) -> float:
        warmup_steps = int(self.cfg.steps * self.cfg.sparsity_warmup_fraction)
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0

    def step(self, step: int, x: torch.Tensor) -> None:
        """One training step on the (global) batch x; a distributed rank computes the loss on its slice."""
        sae, cfg, distributed = self.sae, self.cfg, self.distributed
        if step == 0:
            initialise_b_dec(sae, x, cfg.b_dec_init)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        dead = self.tokens_since_fired >= cfg.dead_window
        local = x if distributed is None else distributed.shard(x)
        with torch.autocast(local.device.type, dtype=getattr(torch, cfg.autocast or "float32"),
                            enabled=cfg.autocast is not None):
            out = self.wrapped(local, sparsity_scale=self.sparsity_scale(step), dead=dead.to(local.device))
        if distributed is not None and "auxk" in out.losses and dead.any():
            out = _global_auxk(out, local, distributed)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()  # under DDP this also averages the gradients over the ranks
        if sae.unit_norm_decoder:
            sae.remove_parallel_gradient()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if sae.unit_norm_decoder:
            sae.normalize_decoder()
        counts = (out.fire_counts if distributed is None else distributed.sum(out.fire_counts)).cpu()
        self.fire_counts += counts
        self.tokens_since_fired += len(x)
        self.tokens_since_fired[counts > 0] = 0
        if distributed is not None and isinstance(sae, BatchTopKSAE):
            # each rank's EMA took its own smallest kept value; the smallest over ranks is the batch's
            distributed.min(sae.threshold)
        if step in self.resample_steps:
            self.resample(x)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            self._log(step, x, local, out)

    @torch.no_grad()
    def _log(self, step: int, x: torch.Tensor, local: torch.Tensor, out) -> None:
        residual = (local - out.x_hat.detach()).pow(2).sum()
        variance = (x - x.mean(dim=0)).pow(2).sum()
        means = {"loss": out.loss, "l0": out.l0, **out.losses}
        if self.distributed is not None:  # sums over the ranks' slices; means of the slices' means
            residual = self.distributed.sum(residual)
            stacked = self.distributed.sum(torch.stack([v.detach().float() for v in means.values()]))
            means = dict(zip(means, stacked / self.distributed.world_size))
        row = {"step": step, "tokens": (step + 1) * len(x), "lr": self.lr_at(step), "loss": means["loss"].item(),
               "l0": means["l0"].item(), "explained_variance": 1 - (residual / variance).item(),
               "dead_fraction": (self.tokens_since_fired >= self.cfg.dead_window).float().mean().item(),
               **{name: means[name].item() for name in out.losses}}
        for key, value in row.items():
            self.history.setdefault(key, []).append(value)

    @torch.no_grad()
    def resample(self, x: torch.Tensor) -> int:
        """Anthropic's resampling: each dead latent gets an input the SAE reconstructs badly."""
        sae = self.sae
        dead = torch.nonzero(self.tokens_since_fired >= self.resample_window).flatten()
        if not len(dead):
            return 0
        errors = (sae(x).x_hat - x).pow(2).sum(dim=-1)
        if errors.sum() <= 0:
            return 0
        picks = torch.multinomial(errors.pow(2).cpu(), len(dead), replacement=True, generator=self.generator)
        inputs = x[picks] - sae.b_dec
        alive = torch.ones(sae.cfg.d_sae, dtype=torch.bool)
        alive[dead] = False
        encoder_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        sae.W_dec[dead] = torch.nn.functional.normalize(inputs, dim=1)
        sae.W_enc[:, dead] = (torch.nn.functional.normalize(inputs, dim=1) * encoder_norm * 0.2).T
        biases = [sae.b_gate, sae.b_mag, sae.r_mag] if sae.architecture == "gated" else [sae.b_enc]
        for bias in biases:
            bias[dead] = 0.0
        self._reset_adam(dead)
        self.tokens_since_fired[dead] = 0
        return len(dead)

    def _reset_adam(self, latents: torch.Tensor) -> None:
        """Forget Adam's moments for the resampled latents' encoder columns, biases and decoder rows."""
        for name, param in self.sae.named_parameters():
            state = self.optimizer.state.get(param)
            if not state or name == "b_dec":
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                if name == "W_enc":
                    state[key][:, latents] = 0
                else:  # W_dec rows and the per-latent vectors (b_enc, b_gate, r_mag, b_mag)
                    state[key][latents] = 0

    def state_dict(self) -> dict:
        return {"sae": self.sae.state_dict(), "optimizer": self.optimizer.state_dict(),
                "tokens_since_fired": self.tokens_since_fired, "fire_counts": self.fire_counts,
                "generator": self.generator.get_state(), "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired = state["tokens_since_fired"]
        self.fire_counts = state["fire_counts"]
        self.generator.set_state(state["generator"])
        self.history = state["history"]


def _global_auxk(out: SAEOutput, x: torch.Tensor, distributed: Distributed) -> SAEOutput:
    """`out` with its AuxK term normalised by the global batch's residual variance instead of the slice's.

    `saekit.sae.sparse.auxk_loss` divides its error by the variance of the residual x - x_hat over the
    batch it sees, here one rank's slice. The factor slice variance / global variance (no gradient)
    turns each rank's term into (its error) / (global variance), whose average over the ranks is the
    one-process loss.
    """
    residual = (x - out.x_hat).detach()
    local = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)  # as auxk_loss computes it
    n = len(x) * distributed.world_size
    mean = distributed.sum(residual.sum(dim=0)) / n
    variance = distributed.sum((residual - mean).pow(2).sum()) / n
    losses = {**out.losses, "auxk": out.losses["auxk"] * (local / variance.clamp_min(1e-12))}
    return replace(out, losses=losses, loss=sum(losses.values()))


@torch.no_grad()
def initialise_b_dec(sae: SAE, x: torch.Tensor, method: str) -> None:
    if method == "mean":
        sae.b_dec.copy_(x.mean(dim=0))
    elif method == "geometric_median":
        sae.b_dec.copy_(geometric_median(x))
    else:
        sae.b_dec.zero_()


def geometric_median(points: torch.Tensor, iterations: int = 50, tolerance: float = 1e-6) -> torch.Tensor:
    """The point minimising the sum of distances to `points` (Weiszfeld's algorithm), robust to outliers."""
    points = points.double()
    median = points.mean(dim=0)
    for _ in range(iterations):
        weights = 1 / (points - median).norm(dim=1).clamp_min(1e-8)
        updated = (weights[:, None] * points).sum(dim=0) / weights.sum()
        if (updated - median).norm() <= tolerance * updated.norm().clamp_min(1e-12):
            median = updated
            break
        median = updated
    return median.float()


def train_saes(saes: list[SAE], data, cfg: TrainConfig, hook: str | None = None, progress: bool = True,
               distributed: Distributed | None = None) -> list[TrainResult]:
    """Train several SAEs on one stream of activations in one pass (same batches, same steps).

    `data` is an `ActivationStore`, an `ActivationStream` or anything with `batches(batch_size,
    seed=..., start=...)` and `scaling_factor()`. With `checkpoint_every`, an interrupted run resumes
    from its last checkpoint when called again with the same arguments. With `distributed` (from
    `saekit.distributed.init_distributed`, one call per rank) the ranks share each batch; only rank 0
    shows progress and writes checkpoints, and every rank returns the same results. The SAEs train on
    the device they are on (under `distributed`, its device).
    """
    if not saes:
        raise ValueError("train_saes needs at least one SAE")
    if distributed is not None and distributed.world_size == 1:
        distributed = None
    if distributed is not None:
        if cfg.batch_size % distributed.world_size:
            raise ValueError(f"batch_size must be a multiple of the {distributed.world_size} ranks (each computes "
                             f"the loss on an equal slice of the batch), got {cfg.batch_size}")
        for sae in saes:
            sae.to(distributed.device)
    reuse_freed_memory()
    d_in = data.d_in(hook) if hasattr(data, "d_in") else saes[0].cfg.d_in
    for sae in saes:
        if sae.cfg.d_in != d_in:
            raise ValueError(f"an SAE with d_in={sae.cfg.d_in} cannot train on activations of width {d_in}"
                             + (f" (hook {hook})" if hook else ""))
    trainers = [_Trainer(sae, cfg, distributed) for sae in saes]
    start = 0
    checkpoint = Path(cfg.checkpoint_dir) / CHECKPOINT if cfg.checkpoint_dir else None
    if checkpoint is not None and checkpoint.exists():
        start = _load_checkpoint(checkpoint, trainers, cfg)
    else:  # every SAE starts from the same seed, so an SAE trains the same alone or in a sweep
        for trainer in trainers:
            # A stream of its own: seeded like the model's init (seed 0, randn of width n_embd), the SAE's
            # decoder rows would equal the initial token embeddings, and latent i would tend to fire on token i.
            trainer.sae.init_weights(torch.Generator().manual_seed(cfg.seed + SAE_INIT_SEED_OFFSET))
    if distributed is not None and not distributed.same_everywhere(start):
        raise ValueError(f"rank {distributed.rank} would start at step {start} but another rank would not: every rank "
                         f"must see the same checkpoint_dir ({cfg.checkpoint_dir}) on a shared filesystem")
    main = distributed is None or distributed.is_main
    device = next(saes[0].parameters()).device  # batches come from the store on the CPU
    scale = data.scaling_factor(hook)
    batches = data.batches(cfg.batch_size, hook, seed=cfg.seed, start=start)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", disable=not (progress and main))
    for step in bar:
        x = next(batches).to(device)
        for trainer in trainers:
            trainer.step(step, x)
        if step % cfg.log_every == 0:
            bar.set_postfix_str(_progress_text(trainers))
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps and main:
            _save_checkpoint(checkpoint, trainers, step + 1, cfg)
    bar.close()
    return [TrainResult(t.sae.eval(), scale, t.history, t.fire_counts, t.tokens_since_fired, cfg.tokens,
                        cfg.dead_window) for t in trainers]


def train_sae(sae: SAE, data, cfg: TrainConfig, hook: str | None = None, progress: bool = True) -> TrainResult:
    """Train one SAE (see `train_saes`)."""
    return train_saes([sae], data, cfg, hook, progress)[0]


def _progress_text(trainers: list[_Trainer]) -> str:
    parts = []
    for t in trainers:
        h = t.history
        parts.append(f"loss {h['loss'][-1]:.3g} L0 {h['l0'][-1]:.1f} ev {h['explained_variance'][-1]:.3f} "
                     f"dead {h['dead_fraction'][-1]:.1%}")
    return " | ".join(parts)


def _save_checkpoint(path: Path, trainers: list[_Trainer], step: int, cfg: TrainConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "config": asdict(cfg), "trainers": [t.state_dict() for t in trainers],
             "architectures": [t.sae.cfg.to_dict() for t in trainers]}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, trainers: list[_Trainer], cfg: TrainConfig) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read the training checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    expected = [t.sae.cfg.to_dict() for t in trainers]
    if state["architectures"] != expected or _comparable(state["config"]) != _comparable(asdict(cfg)):
        raise ValueError(f"the checkpoint in {path.parent} belongs to another run (different SAEs or training "
                         "settings); use another checkpoint_dir or delete it")
    for trainer, trainer_state in zip(trainers, state["trainers"]):
        trainer.load_state_dict(trainer_state)
    return state["step"]


def _comparable(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["betas"] = list(config["betas"])
    config["resample_at"] = list(config["resample_at"])
    return config

