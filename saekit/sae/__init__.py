"""Sparse autoencoders: one file per architecture on the small shared base in `base.py`."""

from saekit.sae.base import ARCHITECTURES, SAE, SAEConfig, SAEOutput, default_lr
from saekit.sae.batchtopk import BatchTopKSAE
from saekit.sae.gated import GatedSAE
from saekit.sae.jumprelu import JumpReLUSAE
from saekit.sae.matryoshka import MatryoshkaSAE
from saekit.sae.relu import ReLUSAE
from saekit.sae.topk import TopKSAE


def create_sae(cfg: SAEConfig) -> SAE:
    """An (uninitialised) SAE of the architecture `cfg` names."""
    return ARCHITECTURES[cfg.architecture](cfg)


__all__ = ["ARCHITECTURES", "SAE", "BatchTopKSAE", "GatedSAE", "JumpReLUSAE", "MatryoshkaSAE", "ReLUSAE", "SAEConfig",
           "SAEOutput", "TopKSAE", "create_sae", "default_lr"]
