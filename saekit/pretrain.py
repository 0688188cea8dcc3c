"""
Train saekit's embedded default model: a current-era nanochat GPT and its BPE tokenizer, on TinyWorld.

One deterministic command (`saekit train-model`) builds everything the course loads by default:
1. a byte-level BPE tokenizer trained with rustbpe on TinyWorld text, with nanochat's special tokens;
2. a nanochat-architecture GPT (July 2026: value embeddings, smear, backout, sliding windows),
   initialised as nanochat does and trained with AdamW on BOS-aligned best-fit packed rows;
3. held-out loss and the capability probes of `saekit.capabilities`;
4. everything saved in nanochat's own layout (`tokenizer/tokenizer.pkl`,
   `base_checkpoints/d<depth>/model_<step>.pt` + `meta_<step>.json`), which nanochat itself can load.

The same seed on the same machine (and thread count) gives the same bytes.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # text on stderr: notebooks stay comparable under nbval

from saekit.capabilities import HELD_OUT_SEED, run_probes
from saekit.data import pack_rows, tinyworld_docs
from saekit.nanochat import GPT, GPTConfig, save_checkpoint
from saekit.tokenizer import Tokenizer, train_tokenizer
from saekit.world import TinyWorld


@dataclass
class PretrainConfig:
    seed: int = 0
    vocab_size: int = 1024
    tokenizer_docs: int = 20_000
    n_layer: int = 6
    n_embd: int = 128
    n_head: int = 4
    n_kv_head: int = 4
    sequence_len: int = 256
    window_pattern: str = "SSSL"
    batch_rows: int = 16
    steps: int = 2500
    lr: float = 3e-3
    embedding_lr: float = 1e-2
    warmup_steps: int = 100
    warmdown_fraction: float = 0.4
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_rows: int = 64
    keep_every: int = 0  # also keep a checkpoint every N steps (0: only the last)
    threads: int = 2


def lr_multiplier(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, flat, then linear warm-down to `final_lr_fraction`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    warmdown_start = int(cfg.steps * (1 - cfg.warmdown_fraction))
    if step < warmdown_start:
        return 1.0
    progress = (step - warmdown_start) / max(1, cfg.steps - warmdown_start)
    return 1.0 - progress * (1.0 - cfg.final_lr_fraction)


def _batches(tokenizer: Tokenizer, seed: int, rows: int, seq_len: int):
    packed = pack_rows(tinyworld_docs(tokenizer, seed=seed, labels=False), seq_len + 1)
    while True:
        batch = torch.from_numpy(np.stack([next(packed).ids for _ in range(rows)]))
        yield batch[:, :-1], batch[:, 1:]


@torch.no_grad()
def held_out_loss(model: GPT, tokenizer: Tokenizer, rows: int = 64, seq_len: int = 256) -> float:
    """Mean next-token cross-entropy (nats) on packed rows of a TinyWorld seed never trained on."""
    x, y = next(_batches(tokenizer, HELD_OUT_SEED, rows, seq_len))
    return float(model(x, targets=y))


def train_default_model(out_dir: str | os.PathLike, cfg: PretrainConfig | None = None, progress: bool = True) -> dict:
    """Train tokenizer and model from scratch into `out_dir` (nanochat layout); return the meta dict."""
    cfg = cfg or PretrainConfig()
    out_dir = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    started = time.time()

    tokenizer = train_tokenizer(iter(TinyWorld(cfg.seed).texts(cfg.tokenizer_docs)), cfg.vocab_size)
    tokenizer.save(out_dir / "tokenizer")
    _save_token_bytes(tokenizer, out_dir / "tokenizer" / "token_bytes.pt")

    config = GPTConfig(sequence_len=cfg.sequence_len, vocab_size=tokenizer.vocab_size, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, n_embd=cfg.n_embd, window_pattern=cfg.window_pattern)
    model = GPT(config)
    model.init_weights(torch.Generator().manual_seed(cfg.seed))
    optimizer = _optimizer(model, cfg)
    checkpoint_dir = out_dir / "base_checkpoints" / f"d{cfg.n_layer}"
    batches = _batches(tokenizer, cfg.seed, cfg.batch_rows, cfg.sequence_len)
    history = []
    bar = tqdm(range(cfg.steps), desc="train-model", disable=not progress)
    for step in bar:
        x, y = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(step, cfg)
        loss = model(x, targets=y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        history.append(round(loss.item(), 4))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if cfg.keep_every and (step + 1) % cfg.keep_every == 0 and step + 1 < cfg.steps:
            meta = {"saekit": {"pretrain": asdict(cfg), "intermediate": True}}
            save_checkpoint(model, checkpoint_dir, step + 1, meta)
    train_seconds = time.time() - started

    model.eval()
    probes = run_probes(model, tokenizer)
    meta = {
        "saekit": {
            "pretrain": asdict(cfg),
            "tokens_seen": cfg.steps * cfg.batch_rows * cfg.sequence_len,
            "parameters": model.parameter_counts(),
            "train_loss_last_100": round(float(np.mean(history[-100:])), 4),
            "held_out_loss": round(held_out_loss(model, tokenizer, cfg.eval_rows, cfg.sequence_len), 4),
            "probes": {name: round(r["accuracy"], 4) for name, r in probes.items()},
            "train_seconds": round(train_seconds),
            "machine": f"{platform.machine()}, torch {torch.__version__}, {cfg.threads} threads",
            "loss_history": history[:: max(1, cfg.steps // 200)],
        }
    }
    save_checkpoint(model, checkpoint_dir, cfg.steps, meta)
    return {"step": cfg.steps, **meta, "probe_failures": {n: r["failures"] for n, r in probes.items()}}


def _optimizer(model: GPT, cfg: PretrainConfig) -> torch.optim.Optimizer:
    named = list(model.named_parameters())
    embeddings = [p for n, p in named if n.startswith(("transformer.wte", "value_embeds"))]
    matrices = [p for n, p in named if p.ndim == 2 and not n.startswith(("transformer.wte", "value_embeds"))]
    scalars = [p for n, p in named if p.ndim < 2]
    groups = [dict(params=embeddings, lr=cfg.embedding_lr, weight_decay=0.0),
              dict(params=matrices, lr=cfg.lr, weight_decay=cfg.weight_decay),
              dict(params=scalars, lr=cfg.lr, weight_decay=0.0)]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def _save_token_bytes(tokenizer: Tokenizer, path: Path) -> None:
    """nanochat's token_bytes.pt: the UTF-8 length of each token (0 for special tokens), for bits per byte."""
    lengths = [0 if tokenizer.is_special(i) else len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)]
    tmp = path.with_name(path.name + ".tmp")
    torch.save(torch.tensor(lengths, dtype=torch.int32), tmp)
    os.replace(tmp, path)


def describe_training(meta: dict) -> str:
    """A Markdown account of how a default model was trained and what it can do."""
    info = meta["saekit"]
    cfg = info["pretrain"]
    settings = [
        ("architecture", "nanochat, July-2026 era (value embeddings, smear, backout, "
                         f"windows `{cfg['window_pattern']}`)"),
        ("depth / width / heads", f"{cfg['n_layer']} layers, n_embd {cfg['n_embd']}, "
                                  f"{cfg['n_head']} heads ({cfg['n_kv_head']} kv)"),
        ("context", f"{cfg['sequence_len']} tokens"),
        ("tokenizer", f"rustbpe BPE, {cfg['vocab_size']} tokens incl. nanochat's 9 special tokens, "
                      f"trained on {cfg['tokenizer_docs']} documents"),
        ("parameters", f"{info['parameters']['total']:,}"),
        ("optimiser", f"AdamW, lr {cfg['lr']} (embeddings {cfg['embedding_lr']}), {cfg['warmup_steps']} warm-up steps, "
                      f"linear warm-down over the last {cfg['warmdown_fraction']:.0%}"),
        ("training", f"{cfg['steps']} steps x {cfg['batch_rows']} rows x {cfg['sequence_len']} tokens "
                     f"= {info['tokens_seen']:,} tokens"),
    ]
    settings_table = "\n".join(f"| {name} | {value} |" for name, value in settings)
    probes = "\n".join(f"| {name} | {acc:.1%} |" for name, acc in info["probes"].items())
    return f"""# The embedded default model

Trained by `saekit train-model` (seed {cfg['seed']}) on TinyWorld, in {info['train_seconds']} s on {info['machine']}.

| setting | value |
| --- | --- |
{settings_table}

## Results

- training loss (mean of the last 100 steps): {info['train_loss_last_100']:.3f} nats
- held-out loss (TinyWorld seed {HELD_OUT_SEED}, never trained on): {info['held_out_loss']:.3f} nats

| capability probe (greedy decoding, held-out prompts) | accuracy |
| --- | --- |
{probes}
"""
