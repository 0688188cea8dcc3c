"""
Helpers that keep the course notebooks short, deterministic and readable.

`setup_notebook` is the first cell of every notebook: it seeds every random generator, fixes
the thread count (results on a CPU depend on it), and sets one figure style, so a notebook's
printed numbers are the same on every run and can be checked by `pytest --nbval`.
`show_tokens` and `show_labels` print what a tokenizer and TinyWorld's labels do to a text.
`course_store` collects (once, then from a cache) the activations the SAE notebooks train on.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from saekit.nanochat import load_model
from saekit.store import ActivationStore, collect_activations, model_fingerprint
from saekit.world import CONCEPTS, Document, token_labels

DEFAULT_THREADS = 2
COURSE_HOOK = "blocks.3.hook_resid_post"


def setup_notebook(seed: int = 0, threads: int = DEFAULT_THREADS) -> None:
    """Seed python, numpy and torch; fix torch's thread count; set matplotlib's defaults."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    import matplotlib

    matplotlib.rcParams.update({"figure.figsize": (8, 3.5), "figure.dpi": 90, "axes.spines.top": False,
                                "axes.spines.right": False})


def show_tokens(tokenizer, ids: list[int]) -> str:
    """Token boundaries made visible: `|Once| upon| a| time|`."""
    return "|" + "|".join(tokenizer.token_str(i) for i in ids) + "|"


def show_labels(doc: Document, tokenizer, max_tokens: int = 40, skip_kinds: tuple[str, ...] = ("topic",)) -> str:
    """One line per token: the token and the concepts it carries (topic concepts left out by default)."""
    ids, labels = token_labels(doc, tokenizer)
    lines = []
    for token_id, row in list(zip(ids, labels))[:max_tokens]:
        names = [c.name for c, on in zip(CONCEPTS, row) if on and c.kind not in skip_kinds]
        lines.append(f"{tokenizer.token_str(token_id)!r:>18}  {', '.join(names)}")
    return "\n".join(lines)


def cache_dir() -> Path:
    """Where saekit keeps what it can rebuild: `$SAEKIT_CACHE`, else `~/.cache/saekit`."""
    return Path(os.environ.get("SAEKIT_CACHE", "~/.cache/saekit")).expanduser()


def course_store(n_tokens: int = 1_000_000, hook: str = COURSE_HOOK, progress: bool = True) -> ActivationStore:
    """The default model's activations at `hook` over TinyWorld, collected once and cached.

    The cache is keyed by the model's weight fingerprint, the hook and the size, so a retrained
    default model never reads a stale store; an interrupted collection resumes.
    """
    model, tokenizer = load_model()
    path = cache_dir() / "stores" / f"{model_fingerprint(model)}-{hook}-{n_tokens}"
    return collect_activations(model, tokenizer, hook, n_tokens, path, progress=progress)
