"""
Saving and loading SAEs in SAELens's v6 on-disk format, saekit's native format.

    my_sae/
      cfg.json                  d_in, d_sae, architecture (+ k for topk), metadata (hook, model, ...)
      sae_weights.safetensors   W_enc, b_enc (or b_gate, r_mag, b_mag), W_dec, b_dec (+ threshold)
      sparsity.safetensors      "sparsity": log10 firing frequency of each latent (optional)

A saved SAE reads raw activations: the training scaling constant and the decoder norms are folded
into the weights (`SAE.to_raw_space`), so `normalize_activations` is "none". saekit's own facts —
its architecture name and full `SAEConfig`, the scaling constant that was folded, how it was
trained — live under `metadata.saekit`, which SAELens ignores. The folder is written under a
temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saekit.sae.base import ARCHITECTURES, SAE, SAEConfig

SAELENS_FORMAT_VERSION = "6.0.0"
FROM_SAELENS_ARCHITECTURE = {"standard": "relu", "topk": "topk", "gated": "gated", "jumprelu": "jumprelu"}


def saelens_config(sae: SAE, extra_metadata: dict | None = None) -> dict:
    """cfg.json for an SAE that is already in raw space."""
    cfg = sae.cfg
    meta = cfg.metadata
    metadata = {
        "sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "model_name": meta.get("model_name", ""), "model_class_name": "nanochat", "hook_name": cfg.hook_name,
        "hook_head_index": None, "context_size": meta.get("context_size"), "prepend_bos": True,
        "seqpos_slice": [None], "model_from_pretrained_kwargs": {}, "dataset_path": meta.get("dataset_path", ""),
        "exclude_special_tokens": meta.get("exclude_special_tokens", True), "sequence_separator_token": "bos",
        "disable_concat_sequences": False,
        "saekit": {"architecture": cfg.architecture, "config": cfg.to_dict(), **(extra_metadata or {})},
    }
    return {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            **sae.saelens_config_extras(), "architecture": sae.saelens_architecture, "metadata": metadata}


def save_sae(sae: SAE, path: str | os.PathLike, scale: float = 1.0, sparsity: torch.Tensor | None = None,
             extra_metadata: dict | None = None) -> Path:
    """Write `sae` (trained on activations multiplied by `scale`) as a raw-space SAELens v6 folder.

    `sparsity`, if given, is each latent's firing frequency (a fraction), stored as its log10.
    """
    path = Path(path)
    raw = sae.to_raw_space(scale)
    extra = {"folded_scaling_factor": scale, **(extra_metadata or {})}
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "cfg.json").write_text(json.dumps(saelens_config(raw, extra), indent=2))
    tensors = {name: t.detach().float().contiguous().cpu() for name, t in raw.saelens_tensors().items()}
    save_file(tensors, str(tmp / "sae_weights.safetensors"))
    if sparsity is not None:
        log_frequency = torch.log10(sparsity.detach().double().clamp_min(1e-10)).float().cpu()
        save_file({"sparsity": log_frequency}, str(tmp / "sparsity.safetensors"))
    if path.exists():
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def load_sae(path: str | os.PathLike) -> SAE:
    """Load a saved SAE folder (saekit's, or any SAELens v6 standard/topk/gated/jumprelu SAE)."""
    path = Path(path)
    cfg_path, weights_path = path / "cfg.json", path / "sae_weights.safetensors"
    for needed in (cfg_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"expected a saved SAE folder with cfg.json and sae_weights.safetensors; "
                                    f"{needed} is missing")
    try:
        raw_cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path} is not valid JSON: {exc}") from exc
    cfg = _saekit_config(raw_cfg, cfg_path)
    sae = ARCHITECTURES[cfg.architecture](cfg)
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    expected = {name: tuple(t.shape) for name, t in sae.saelens_tensors().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        raise ValueError(f"{weights_path} holds {found}; a {cfg.architecture} SAE with d_in={cfg.d_in}, "
                         f"d_sae={cfg.d_sae} needs {expected}")
    sae.load_saelens_tensors({name: t.float() for name, t in tensors.items()})
    return sae.eval()


def load_sparsity(path: str | os.PathLike) -> torch.Tensor | None:
    """The log10 firing frequencies saved beside an SAE, or None."""
    file = Path(path) / "sparsity.safetensors"
    return load_file(str(file))["sparsity"] if file.is_file() else None


def _saekit_config(raw: dict, cfg_path: Path) -> SAEConfig:
    metadata = raw.get("metadata") or {}
    if raw.get("normalize_activations", "none") != "none":
        raise ValueError(f"{cfg_path}: normalize_activations={raw['normalize_activations']!r} is not supported; "
                         "saekit reads SAEs whose scaling is folded into the weights ('none')")
    saekit_meta = metadata.get("saekit")
    if saekit_meta:
        return SAEConfig.from_dict(saekit_meta["config"])
    architecture = FROM_SAELENS_ARCHITECTURE.get(raw.get("architecture"))
    if architecture is None:
        raise ValueError(f"{cfg_path}: architecture {raw.get('architecture')!r} is not one saekit reads; "
                         f"expected one of {sorted(FROM_SAELENS_ARCHITECTURE)}")
    return SAEConfig(architecture=architecture, d_in=raw["d_in"], d_sae=raw["d_sae"], k=raw.get("k"),
                     hook_name=metadata.get("hook_name", ""),
                     metadata={"model_name": metadata.get("model_name", ""), "saelens": metadata})
