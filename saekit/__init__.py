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
- checks: `run_probes` (has a model learned TinyWorld?).
"""

from saekit.capabilities import run_probes
from saekit.data import FileSource, TinyWorldSource, TokenDoc, pack_rows, text_source, tinyworld_docs
from saekit.hooks import HookError, HookLayout, capture, hook_points, patch, run_until
from saekit.nanochat import GPT, CheckpointError, GPTConfig, KVCache, generate, load_model, save_checkpoint
from saekit.store import ActivationStore, StoreError, collect_activations
from saekit.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, load_tokenizer, train_tokenizer
from saekit.world import CONCEPTS, Concept, Document, TinyWorld, concept_table, label_text, token_labels

__version__ = "0.1.0"

__all__ = [
    "CONCEPTS", "GPT", "SPECIAL_TOKENS", "ActivationStore", "CheckpointError", "Concept", "Document", "FileSource",
    "GPTConfig", "HookError", "HookLayout", "KVCache", "StoreError", "TinyWorld", "TinyWorldSource", "TokenDoc",
    "Tokenizer", "TokenizerError", "capture", "collect_activations", "concept_table", "generate", "hook_points",
    "label_text", "load_model", "load_tokenizer", "pack_rows", "patch", "run_probes", "run_until", "save_checkpoint",
    "text_source", "tinyworld_docs", "token_labels", "train_tokenizer",
]
