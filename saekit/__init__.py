"""
saekit: sparse-autoencoder interpretability on nanochat models, as a course and a toolkit.

The public API, by stage of the pipeline:

- models: `load_model` (the embedded TinyWorld model, or any nanochat checkpoint), `generate`,
  `GPT`, `GPTConfig`, `save_checkpoint`;
- tokenizers: `Tokenizer`, `load_tokenizer`, `train_tokenizer`;
- text with ground truth: `TinyWorld`, `CONCEPTS`, `token_labels`, `label_text`;
- data: `text_source` (TinyWorld, text/jsonl files, nanochat's parquet shards), `pack_rows`;
- activations: `hook_points`, `capture`, `patch`, `run_until`, `HookLayout`; `collect_activations`
  into an `ActivationStore`;
- SAEs: `SAEConfig`, `create_sae`, `save_sae`, `load_sae` (SAELens v6 folders, and SAELens's own SAEs);
  `TrainConfig`, `train_sae`, `train_saes` (several SAEs on one pass);
- evaluation: `reconstruction_metrics`, `downstream_metrics`, `concept_recovery`, `concept_probes` (the
  linear ceiling), `evaluate_sae`, `sweep`;
- features: `feature_statistics` -> `FeatureStats` (cards in Jupyter), `write_feature_page`;
  `saekit.explorer.FeatureExplorer` (ipywidgets, imported on demand);
- steering: `steer`, `clamp`, `ablate`, `intervene`, `max_activations`; `stream` (top features per
  generated token);
- checks: `run_probes` (has a model learned TinyWorld?).

Sharing lives in `saekit.sae.io` (SAELens folders), `saekit.neuronpedia` (names, payloads, API client)
and `saekit.neuronpedia_export` (SAEDashboard batches, Neuronpedia's export layout).
"""

from saekit.capabilities import run_probes
from saekit.cards import write_feature_page
from saekit.data import FileSource, TinyWorldSource, TokenDoc, pack_rows, text_source, tinyworld_docs
from saekit.evaluate import (
    concept_probes,
    concept_recovery,
    downstream_metrics,
    evaluate_sae,
    reconstruction_metrics,
    sweep,
)
from saekit.features import FeatureStats, feature_statistics
from saekit.hooks import HookError, HookLayout, capture, hook_points, patch, run_until
from saekit.nanochat import GPT, CheckpointError, GPTConfig, KVCache, generate, load_model, save_checkpoint
from saekit.runtime import stream
from saekit.sae import SAEConfig, create_sae
from saekit.sae.io import load_sae, save_sae
from saekit.steering import ablate, clamp, intervene, max_activations, steer
from saekit.store import ActivationStore, StoreError, collect_activations
from saekit.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, load_tokenizer, train_tokenizer
from saekit.train import TrainConfig, train_sae, train_saes
from saekit.world import CONCEPTS, Concept, Document, TinyWorld, concept_table, label_text, token_labels

__version__ = "0.1.0"

__all__ = [
    "CONCEPTS", "GPT", "SPECIAL_TOKENS", "ActivationStore", "CheckpointError", "Concept", "Document", "FeatureStats",
    "FileSource", "GPTConfig", "HookError", "HookLayout", "KVCache", "SAEConfig", "StoreError", "TinyWorld",
    "TinyWorldSource", "TokenDoc", "Tokenizer", "TokenizerError", "TrainConfig", "ablate", "capture", "clamp",
    "collect_activations", "concept_probes", "concept_recovery", "concept_table", "create_sae", "downstream_metrics",
    "evaluate_sae",
    "feature_statistics", "generate", "hook_points", "intervene", "label_text", "load_model", "load_sae",
    "load_tokenizer", "max_activations", "pack_rows", "patch", "reconstruction_metrics", "run_probes", "run_until",
    "save_checkpoint", "save_sae", "steer", "stream", "sweep", "text_source", "tinyworld_docs", "token_labels",
    "train_sae", "train_saes", "train_tokenizer", "write_feature_page",
]
