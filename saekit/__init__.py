"""
saekit: sparse-autoencoder interpretability on nanochat models, as a course and a toolkit.

The public API, by stage of the pipeline:

- models: `load_model` (the embedded TinyWorld model, or any nanochat checkpoint), `generate`,
  `GPT`, `GPTConfig`, `save_checkpoint`;
- tokenizers: `Tokenizer`, `load_tokenizer`, `train_tokenizer`;
- text with ground truth: `TinyWorld`, `CONCEPTS`, `token_labels`, `label_text`;
- data: `pack_rows`, `tinyworld_docs`;
- checks: `run_probes` (has a model learned TinyWorld?).
"""

from saekit.capabilities import run_probes
from saekit.data import TokenDoc, pack_rows, tinyworld_docs
from saekit.nanochat import GPT, CheckpointError, GPTConfig, KVCache, generate, load_model, save_checkpoint
from saekit.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, load_tokenizer, train_tokenizer
from saekit.world import CONCEPTS, Concept, Document, TinyWorld, concept_table, label_text, token_labels

__version__ = "0.1.0"

__all__ = [
    "CONCEPTS", "GPT", "SPECIAL_TOKENS", "CheckpointError", "Concept", "Document", "GPTConfig", "KVCache",
    "TinyWorld", "TokenDoc", "Tokenizer", "TokenizerError", "concept_table", "generate", "label_text", "load_model",
    "load_tokenizer", "pack_rows", "run_probes", "save_checkpoint", "tinyworld_docs", "token_labels", "train_tokenizer",
]
