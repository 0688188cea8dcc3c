"""
SAE training on several processes with torch's own engine: `torchrun` starts them, DDP averages gradients.

    torchrun --nproc_per_node 2 -m saekit.distributed --config run.json
    torchrun --nproc_per_node 2 -m saekit.cli train --config run.json      (the same, with `saekit train`'s flags)

Data parallel over the batch. Every rank reads the *same* global batch (same store, same seed, so
the same shuffled order: no sampler, no drift between ranks), trains on its 1/W slice, and
`DistributedDataParallel` averages the gradients during backward. Every loss term is a mean over
tokens, so with equal slices (batch_size % world_size == 0) the average of the ranks' gradients
is the gradient of the global batch. The rest of the step then runs identically on every rank,
so the replicas never drift apart. What is a statistic of the batch is reduced explicitly
(`saekit.train` does it):

- fire counts (hence dead latents, AuxK's dead set, resampling's candidates) are summed;
- AuxK's normaliser, the residual's variance over the batch, is the global batch's;
- b_dec's initialisation and resampling use the whole global batch, which every rank holds;
- logged values are means over the ranks' slices, explained variance a ratio of global sums.

The result equals a one-process run with the same global batch up to float rounding, for every
architecture but BatchTopK: its top k x tokens is taken over each rank's slice, not over the global
batch, which is what one process gets with BatchTopK over each slice separately. Its inference
threshold, an EMA of the smallest kept activation, takes the smallest over all ranks, so replicas
stay identical.

Only rank 0 shows progress, writes checkpoints and saves SAEs; every rank resumes from the
checkpoint (`checkpoint_dir` must be on a filesystem they all see). gloo on CPU, nccl on CUDA
(one GPU per process: cuda:LOCAL_RANK).

The config file names a store, the SAE(s) and the training settings:

    {"store": "stores/l3", "hook": "blocks.3.hook_resid_post",    (hook: optional for one-hook stores)
     "sae": {"architecture": "topk", "d_sae": 4096, "k": 32},      (or a list: one pass, saved to out/0, out/1, ...)
     "train": {"steps": 5000, "batch_size": 4096, "checkpoint_every": 500, "checkpoint_dir": "runs/l3/ckpt"},
     "out": "runs/l3/sae"}
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from saekit.sae import SAEConfig, create_sae
from saekit.store import ActivationStore
from saekit.train import TrainConfig, TrainResult, train_saes

CONFIG_KEYS = {"store", "hook", "sae", "train", "out"}


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run: its rank, how many ranks, and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch (the batch size is a multiple of the world size)."""
        n = len(batch) // self.world_size
        return batch[self.rank * n:(self.rank + 1) * n]

    def wrap(self, module: torch.nn.Module) -> DistributedDataParallel:
        """`module` (already on this rank's device) under DDP."""
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, in place (and returned)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def min(self, tensor: torch.Tensor) -> torch.Tensor:
        """Minimum over the ranks, in place (and returned)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def same_everywhere(self, value: int) -> bool:
        """Whether every rank holds the same integer."""
        both = torch.tensor([value, -value], device=self.device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        return int(both[0]) == -int(both[1])


def init_distributed(backend: str | None = None) -> Distributed:
    """Join the process group `torchrun` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT): nccl with one GPU per process when CUDA is available, gloo otherwise.
    Started without torchrun, this is a single process and nothing is initialised."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return Distributed(rank, world_size, device)


# --------------------------------------------------------------------------- the runner


def train_from_config(config: dict, distributed: Distributed | None = None, progress: bool = True) -> list[TrainResult]:
    """Train the SAE(s) a config describes (see the module docstring); rank 0 saves them. Every rank returns
    the same results."""
    distributed = distributed or Distributed()
    unknown, missing = set(config) - CONFIG_KEYS, {"store", "sae", "out"} - set(config)
    if unknown or missing:
        raise ValueError(f"a training config needs keys {sorted(CONFIG_KEYS)} (hook and train optional); "
                         f"unknown: {sorted(unknown)}, missing: {sorted(missing)}")
    store = ActivationStore(config["store"])
    hook = config.get("hook")
    train = dict(config.get("train", {}))
    for key in ("betas", "resample_at"):  # JSON lists back to the tuples TrainConfig holds
        if key in train:
            train[key] = tuple(train[key])
    cfg = TrainConfig(**train)
    specs = config["sae"] if isinstance(config["sae"], list) else [config["sae"]]
    model = store.manifest.get("model") or {}
    defaults = {"d_in": store.d_in(hook), "hook_name": hook or next(iter(store.hooks)),
                "metadata": {"model_name": model.get("name", ""), "context_size": store.manifest.get("context_size")}}
    saes = [create_sae(SAEConfig.from_dict({**defaults, **spec})).to(distributed.device) for spec in specs]
    results = train_saes(saes, store, cfg, hook, progress=progress, distributed=distributed)
    if distributed.is_main:
        out = Path(config["out"])
        for i, result in enumerate(results):
            result.save(out if len(results) == 1 else out / str(i))
    return results


def run(config: dict, progress: bool = True, device: str | torch.device = "cpu") -> list[TrainResult]:
    """`train_from_config` in this process: one rank of a torchrun job (its device is cuda:LOCAL_RANK with
    nccl), or alone on `device`. Rank 0 says where the SAEs went."""
    distributed = init_distributed()
    if distributed.world_size == 1:
        distributed = Distributed(device=torch.device(device))
    results = train_from_config(config, distributed, progress)
    if distributed.is_main:
        print(f"saved to {config['out']}")
    if dist.is_initialized():  # only after success: after an error, torchrun stops the other ranks
        dist.barrier()  # the other ranks wait while rank 0 saves, so that all leave the group together
        dist.destroy_process_group()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saekit.distributed",
                                     description="Train SAEs from a JSON config; start with torchrun for several "
                                                 "processes (torchrun --nproc_per_node N -m saekit.distributed ...)")
    parser.add_argument("--config", required=True, help="JSON file: store, hook, sae, train, out")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run(json.loads(Path(args.config).read_text()), not args.no_progress)


if __name__ == "__main__":
    main()
