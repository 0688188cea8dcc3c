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

`load_sae` also imports SAEs that SAELens saved (standard, topk, gated, jumprelu), in v6 configs
and in the flat configs of SAELens < 6 (`hook_point`, `activation_fn_str`, ...), which it
converts the way SAELens does on load. Options saekit's SAEs do not have are folded into the
weights, so the imported SAE computes what SAELens computes:

- `apply_b_dec_to_input: false` (the encoder sees x, not x - b_dec): b_dec @ W_enc joins the
  encoder biases, since saekit always subtracts b_dec;
- `rescale_acts_by_decoder_norm: true` (TopK ranks h_i * ||d_i||): the norms move into the encoder;
- a pre-6.0 `scaling_factor` (the code was multiplied by it before decoding): it moves into W_dec
  (SAELens 6 drops an all-ones one and cannot load any other);
- a JumpReLU threshold <= 0: SAELens applies a ReLU before the threshold, so it acts as 0 and is
  read as the smallest positive float (saekit keeps a log-threshold).

Run-time normalisation (`normalize_activations` other than "none") cannot be folded and is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saekit.atomic import fresh_dir, swap_in_dir
from saekit.sae.base import ARCHITECTURES, SAE, SAEConfig

SAELENS_FORMAT_VERSION = "6.0.0"
FROM_SAELENS_ARCHITECTURE = {"standard": "relu", "topk": "topk", "gated": "gated", "jumprelu": "jumprelu"}
# pre-6.0 configs are flat; SAELens renames these keys on load and moves the rest under `metadata`
LEGACY_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
                  "activation_fn_str": "activation_fn"}
LEGACY_INFERENCE_KEYS = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
                         "normalize_activations", "reshape_activations", "activation_fn", "activation_fn_kwargs",
                         "finetuning_scaling_factor", "metadata"}
# metadata facts saekit keeps at the top of an imported SAE's metadata, so that saving it again writes them back
KEPT_METADATA = ("model_name", "model_class_name", "context_size", "dataset_path", "exclude_special_tokens",
                 "neuronpedia_id")


def saelens_config(sae: SAE, extra_metadata: dict | None = None) -> dict:
    """cfg.json for an SAE that is already in raw space."""
    cfg = sae.cfg
    meta = cfg.metadata
    metadata = {
        "sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "model_name": meta.get("model_name", ""), "model_class_name": meta.get("model_class_name", "nanochat"),
        "hook_name": cfg.hook_name, "hook_head_index": None, "context_size": meta.get("context_size"),
        "prepend_bos": True, "seqpos_slice": [None], "model_from_pretrained_kwargs": {},
        "dataset_path": meta.get("dataset_path", ""),
        "exclude_special_tokens": meta.get("exclude_special_tokens", True), "sequence_separator_token": "bos",
        "disable_concat_sequences": False,
        **({"neuronpedia_id": meta["neuronpedia_id"]} if meta.get("neuronpedia_id") else {}),
        "saekit": {"architecture": cfg.architecture, "config": cfg.to_dict(), **(extra_metadata or {})},
    }
    return {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            **sae.saelens_config_extras(), "architecture": sae.saelens_architecture, "metadata": metadata}


def save_sae(sae: SAE, path: str | os.PathLike, scale: float = 1.0, sparsity: torch.Tensor | None = None,
             extra_metadata: dict | None = None) -> Path:
    """Write `sae` (trained on activations multiplied by `scale`) as a raw-space SAELens v6 folder.

    `sparsity`, if given, is each latent's firing frequency (a fraction), stored as its log10.
    A `neuronpedia_id` ("{modelId}/{sourceId}") in `sae.cfg.metadata` is written where SAELens reads it.
    """
    path = Path(path)
    raw = sae.to_raw_space(scale)
    extra = {"folded_scaling_factor": scale, **(extra_metadata or {})}
    tmp = fresh_dir(path)
    (tmp / "cfg.json").write_text(json.dumps(saelens_config(raw, extra), indent=2))
    tensors = {name: t.detach().float().contiguous().cpu() for name, t in raw.saelens_tensors().items()}
    save_file(tensors, str(tmp / "sae_weights.safetensors"))
    if sparsity is not None:
        log_frequency = torch.log10(sparsity.detach().double().clamp_min(1e-10)).float().cpu()
        save_file({"sparsity": log_frequency}, str(tmp / "sparsity.safetensors"))
    swap_in_dir(tmp, path)
    return path


def load_sae(path: str | os.PathLike) -> SAE:
    """Load a saved SAE folder: saekit's, or one SAELens saved (standard/topk/gated/jumprelu, v6 or older)."""
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
    if not isinstance(raw_cfg, dict) or not isinstance(raw_cfg.get("metadata") or {}, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object whose metadata is an object; found "
                         f"{type(raw_cfg).__name__}" + (f" with metadata {raw_cfg['metadata']!r}"
                                                        if isinstance(raw_cfg, dict) else ""))
    saekit_meta = (raw_cfg.get("metadata") or {}).get("saekit")
    if saekit_meta:
        _check_normalization(raw_cfg.get("normalize_activations", "none"), cfg_path)
        cfg, imported = SAEConfig.from_dict(saekit_meta["config"]), None
    else:
        cfg, imported = _import_config(_v6_config(raw_cfg), cfg_path)
    sae = ARCHITECTURES[cfg.architecture](cfg)
    try:
        tensors = {name: t.float() for name, t in load_file(str(weights_path)).items()}
    except Exception as exc:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    scaling = None
    if imported is not None:
        tensors, scaling = imported.split(tensors, weights_path)
    expected = {name: tuple(t.shape) for name, t in sae.saelens_tensors().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        raise ValueError(f"{weights_path} holds {found}; a {cfg.architecture} SAE with d_in={cfg.d_in}, "
                         f"d_sae={cfg.d_sae} needs {expected}")
    if imported is not None:
        tensors = imported.fold(tensors, scaling)
    sae.load_saelens_tensors(tensors)
    return sae.eval()


def load_sparsity(path: str | os.PathLike) -> torch.Tensor | None:
    """The log10 firing frequencies saved beside an SAE, or None."""
    file = Path(path) / "sparsity.safetensors"
    return load_file(str(file))["sparsity"] if file.is_file() else None


# --------------------------------------------------------------------------- importing SAELens's SAEs


def _check_normalization(value, cfg_path: Path) -> None:
    if value != "none":
        raise ValueError(f"{cfg_path}: normalize_activations={value!r} is not supported; "
                         "saekit reads SAEs whose scaling is folded into the weights ('none')")


def _is_legacy(raw: dict) -> bool:
    """SAELens's rule: a config without a sae_lens_version (top level or metadata) or below 6.0 is pre-6.0."""
    version = raw.get("sae_lens_version") or (raw.get("metadata") or {}).get("sae_lens_version")
    major = re.match(r"\d+", str(version or ""))
    return major is None or int(major.group()) < 6


def _v6_config(raw: dict) -> dict:
    """`raw` in v6's shape: a pre-6.0 flat config converted as SAELens converts it, a v6 one unchanged."""
    if not _is_legacy(raw):
        return raw
    flat = {LEGACY_RENAMES.get(key, key): value for key, value in raw.items()}
    v6 = {key: flat[key] for key in ("d_in", "d_sae", "apply_b_dec_to_input") if key in flat}
    v6["architecture"] = flat.get("architecture", "standard")
    activation = flat.get("activation_fn", "relu")
    if activation == "topk":
        v6["architecture"] = "topk"
    elif activation != "relu":
        raise ValueError(f"activation_fn {activation!r} is not one saekit reads; expected 'relu' or 'topk'")
    if v6["architecture"] == "topk":
        v6["k"] = (flat.get("activation_fn_kwargs") or {}).get("k", flat.get("k"))
        v6["rescale_acts_by_decoder_norm"] = flat.get("rescale_acts_by_decoder_norm", False)
    normalize = flat.get("normalize_activations")
    # SAELens < 6 wrote a bool here: true meant "expected_average_only_in" (a constant not in the folder)
    v6["normalize_activations"] = ("expected_average_only_in" if normalize else "none") \
        if normalize is None or isinstance(normalize, bool) else normalize
    v6["finetuning_scaling_factor"] = bool(flat.get("finetuning_scaling_factor", False))
    v6["metadata"] = {key: value for key, value in flat.items() if key not in LEGACY_INFERENCE_KEYS}
    return v6


@dataclass
class _Import:
    """What turns a SAELens SAE's tensors into a saekit SAE's: `split` before the shapes are checked, `fold` after."""

    architecture: str  # saekit's name
    apply_b_dec_to_input: bool
    rescale_acts_by_decoder_norm: bool
    finetuning_scaling_factor: bool

    def split(self, tensors: dict[str, torch.Tensor],
              weights_path: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Take out a pre-6.0 scaling factor (saved as `scaling_factor`, or `finetuning_scaling_factor` by 5.x);
        it is returned unless it is all ones."""
        tensors = dict(tensors)
        scaling = None
        for name in ("scaling_factor", "finetuning_scaling_factor"):
            if name not in tensors:
                continue
            value = tensors.pop(name)
            if not torch.equal(value, torch.ones_like(value)):
                if not self.finetuning_scaling_factor:  # SAELens refuses this as well
                    raise ValueError(f"{weights_path} holds a {name} that is not all ones, but the config's "
                                     "finetuning_scaling_factor is false")
                scaling = value
        return tensors, scaling

    @torch.no_grad()
    def fold(self, t: dict[str, torch.Tensor], scaling: torch.Tensor | None) -> dict[str, torch.Tensor]:
        t = dict(t)
        if scaling is not None:  # decode was (f * s) @ W_dec + b_dec
            if scaling.shape != t["W_dec"].shape[:1]:
                raise ValueError(f"the scaling factor has shape {tuple(scaling.shape)}; "
                                 f"expected ({t['W_dec'].shape[0]},)")
            t["W_dec"] = t["W_dec"] * scaling[:, None]
        if not self.apply_b_dec_to_input:  # the encoder read x; saekit's reads x - b_dec
            shift = t["b_dec"] @ t["W_enc"]
            if self.architecture == "gated":
                t["b_gate"] = t["b_gate"] + shift
                t["b_mag"] = t["b_mag"] + shift * t["r_mag"].exp()
            else:
                t["b_enc"] = t["b_enc"] + shift
        if self.rescale_acts_by_decoder_norm:  # TopK ranked h_i * ||d_i|| and decoded f_i / ||d_i||
            norms = t["W_dec"].norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
            t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * norms, t["b_enc"] * norms, t["W_dec"] / norms[:, None]
        if "threshold" in t:  # SAELens computes ReLU(h) * (h > theta), so a theta <= 0 acts as 0
            t["threshold"] = t["threshold"].clamp_min(torch.finfo(torch.float32).tiny)
        return t


def _import_config(raw: dict, cfg_path: Path) -> tuple[SAEConfig, _Import]:
    _check_normalization(raw.get("normalize_activations", "none"), cfg_path)
    architecture = FROM_SAELENS_ARCHITECTURE.get(raw.get("architecture"))
    if architecture is None:
        raise ValueError(f"{cfg_path}: architecture {raw.get('architecture')!r} is not one saekit reads; "
                         f"expected one of {sorted(FROM_SAELENS_ARCHITECTURE)}")
    missing = [key for key in ("d_in", "d_sae") if not isinstance(raw.get(key), int)]
    if architecture == "topk" and not isinstance(raw.get("k"), int):
        missing.append("k")
    if missing:
        raise ValueError(f"{cfg_path}: expected integer {', '.join(missing)}; found "
                         f"{ {key: raw.get(key) for key in missing} }")
    metadata = raw.get("metadata") or {}
    kept = {key: metadata[key] for key in KEPT_METADATA if metadata.get(key) is not None}
    cfg = SAEConfig(architecture=architecture, d_in=raw["d_in"], d_sae=raw["d_sae"],
                    k=raw["k"] if architecture == "topk" else None, hook_name=metadata.get("hook_name") or "",
                    metadata={"model_name": "", **kept, "saelens": metadata})
    return cfg, _Import(architecture, bool(raw.get("apply_b_dec_to_input", True)),
                        bool(raw.get("rescale_acts_by_decoder_norm", False)),
                        bool(raw.get("finetuning_scaling_factor", False)))
