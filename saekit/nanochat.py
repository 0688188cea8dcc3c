"""
A nanochat-compatible GPT: every architecture era, nanochat's module names, exact outputs.

nanochat (github.com/karpathy/nanochat) is not an installable package, and its `GPT` only loads
checkpoints of its own era. saekit carries its own copy of the model so it can load any nanochat
checkpoint — from the October-2025 plain pre-norm transformer to the July-2026 model with
residual lambdas, value embeddings, smear, backout and sliding windows — and reproduce nanochat's
logits to float precision. Module and parameter names are nanochat's (`transformer.h.3.mlp.c_proj`,
`value_embeds.1`, ...), so a hook point means the same module here and on nanochat's own `GPT`.

What changed between eras is described by `GPTConfig`'s architecture fields; `detect_architecture`
reads them off a state dict (keys and shapes tell the eras apart), and the few facts that keys
cannot show (a softcap of 20 in early March 2026) can be overridden by hand.

Also here: the KV cache, generation (greedy or seeded temperature/top-k sampling), and loading and
saving checkpoints in nanochat's on-disk layout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from saekit.tokenizer import Tokenizer, load_tokenizer

NANOCHAT_CONFIG_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "window_pattern")
CHECKPOINT_SOURCES = {"base": "base_checkpoints", "sft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


class CheckpointError(ValueError):
    """A checkpoint that is missing, malformed, or does not match the model it claims to be."""


@dataclass
class GPTConfig:
    # nanochat's own `model_config` (the meta json)
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "L"
    # architecture facts that changed over nanochat's history (defaults: July 2026)
    padded_vocab_size: int = 0  # rows of wte/lm_head; 0 = round vocab_size up to a multiple of 64
    lambdas: bool = True  # resid_lambdas / x0_lambdas (2026-01-11)
    value_embeds: bool = True  # ResFormer value embeddings on alternating layers (2026-01-16)
    ve_gate_channels: int = 12  # 32 until 2026-03-09
    ve_gate_range: float = 3.0  # 2.0 until 2026-03-09
    smear: bool = True  # previous-token embedding mixing (2026-03-14)
    backout: bool = True  # subtract the mid-layer stream before the final norm (2026-03-14)
    qk_scale: float = 1.2  # 1.0 before 2026-03-14
    rotary_base: float = 100000.0  # 10000 before 2026-03-09
    rotary_bf16: bool = False  # cos/sin tables rounded to bfloat16 (until 2026-03-04)
    softcap: float = 15.0  # 20 from 2026-03-02 to 2026-03-09
    sliding_windows: bool = True  # window_pattern applies (2026-01-11); before, every layer saw all positions

    def __post_init__(self):
        if self.padded_vocab_size == 0:
            self.padded_vocab_size = -(-self.vocab_size // 64) * 64
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        if self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            problems.append(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if (self.n_embd // self.n_head) % 2:
            problems.append(f"head_dim={self.n_embd // self.n_head} must be even for rotary embeddings")
        if not self.window_pattern or set(self.window_pattern.upper()) - set("SL"):
            problems.append(f"window_pattern must be letters S and L, found {self.window_pattern!r}")
        if self.padded_vocab_size < self.vocab_size:
            problems.append(f"padded_vocab_size={self.padded_vocab_size} is below vocab_size={self.vocab_size}")
        if problems:
            raise ValueError("invalid GPTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def nanochat_config(self) -> dict:
        """The `model_config` dict nanochat writes into its meta json."""
        return {k: getattr(self, k) for k in NANOCHAT_CONFIG_KEYS}

    @classmethod
    def october_2025(cls, **kwargs) -> GPTConfig:
        """The original architecture (the era of the first nanochat SAE extension)."""
        era = dict(padded_vocab_size=kwargs.get("vocab_size", 32768), lambdas=False, value_embeds=False, smear=False,
                   backout=False, qk_scale=1.0, rotary_base=10000.0, rotary_bf16=True, sliding_windows=False,
                   ve_gate_range=2.0)
        return cls(**{**era, **kwargs})


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer_idx: int, n_layer: int) -> bool:
    """Value embeddings sit on alternating layers, always including the last."""
    return layer_idx % 2 == (n_layer - 1) % 2


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # nanochat's convention: rotate the two halves of the head dim (by -theta; only relative angles matter)
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], dim=-1)


class Linear(nn.Linear):
    """A bias-free linear layer that runs in its input's dtype, as nanochat's does."""

    def reset_parameters(self) -> None:
        pass  # weights come from a checkpoint or from GPT.init_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(dtype=x.dtype))


class Embedding(nn.Embedding):
    """nn.Embedding without its default initialisation (see `Linear.reset_parameters`)."""

    def reset_parameters(self) -> None:
        pass


class KVCache:
    """Keys and values of every layer for a batch of sequences, plus the last embedding (for smear)."""

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0
        self.prev_embedding: torch.Tensor | None = None

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's k, v (B, H, T, D) for one layer; return everything cached so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; this step needs {end}")
        self.k[layer_idx, :, :, self.pos:end] = k
        self.v[layer_idx, :, :, self.pos:end] = v
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qk_scale = config.qk_scale
        self.ve_gate_range = config.ve_gate_range
        self.c_q = Linear(config.n_embd, config.n_head * self.head_dim, bias=False)
        self.c_k = Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.c_v = Linear(config.n_embd, config.n_kv_head * self.head_dim, bias=False)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels = config.ve_gate_channels
        uses_ve = config.value_embeds and has_value_embedding(layer_idx, config.n_layer)
        self.ve_gate = Linear(config.ve_gate_channels, config.n_kv_head, bias=False) if uses_ve else None

    def forward(self, x, ve, cos_sin, window_size, kv_cache: KVCache | None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = self.ve_gate_range * torch.sigmoid(self.ve_gate(x[..., : self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = norm(apply_rotary_emb(q, cos, sin)), norm(apply_rotary_emb(k, cos, sin))
        if self.qk_scale != 1.0:
            q, k = q * self.qk_scale, k * self.qk_scale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        y = _windowed_causal_attention(q, k, v, window_size[0])
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


def _windowed_causal_attention(q, k, v, window: int) -> torch.Tensor:
    """Query i (the last Tq of Tk positions) sees key j iff j <= i and i - j <= window."""
    Tq, Tk = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if Tq == Tk and window >= Tq:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if Tq == 1:
        start = max(0, Tk - (window + 1))
        return F.scaled_dot_product_attention(q, k[:, :, start:], v[:, :, start:], enable_gqa=gqa)
    rows = torch.arange(Tk - Tq, Tk, device=q.device).unsqueeze(1)
    cols = torch.arange(Tk, device=q.device).unsqueeze(0)
    mask = (cols <= rows) & (rows - cols <= window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window_size, kv_cache):
        x = x + self.attn(norm(x), ve, cos_sin, window_size, kv_cache)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.meta: dict = {}  # the checkpoint's meta json, when loaded from one
        self.name = f"nanochat-d{config.n_layer}"
        self.window_sizes = _window_sizes(config)
        V, C = config.padded_vocab_size, config.n_embd
        self.transformer = nn.ModuleDict({
            "wte": Embedding(V, C),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = Linear(C, V, bias=False)
        if config.lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
            self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        if config.smear:
            self.smear_gate = Linear(24, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.full((1,), 0.2))
        if config.value_embeds:
            kv_dim = config.n_kv_head * config.head_dim
            self.value_embeds = nn.ModuleDict({
                str(i): Embedding(V, kv_dim) for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)
            })
        cos, sin = _rotary_tables(config, config.sequence_len * 10)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """nanochat's initialisation (July 2026), drawn from `generator` for reproducibility."""
        g = generator
        C, L = self.config.n_embd, self.config.n_layer
        s = 3**0.5 * C**-0.5
        self.transformer.wte.weight.normal_(0.0, 0.8, generator=g)
        self.lm_head.weight.normal_(0.0, 0.001, generator=g)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                lin.weight.uniform_(-s, s, generator=g)
            block.attn.c_proj.weight.zero_()
            block.mlp.c_fc.weight.uniform_(-0.4 * s, 0.4 * s, generator=g)
            block.mlp.c_proj.weight.zero_()
            if block.attn.ve_gate is not None:
                block.attn.ve_gate.weight.uniform_(0.0, 0.02, generator=g)
        if self.config.lambdas:
            steps = torch.arange(L) / max(L - 1, 1)
            self.resid_lambdas.copy_(1.15 - 0.10 * steps)
            self.x0_lambdas.copy_(0.20 - 0.15 * steps)
        if self.config.smear:
            self.smear_lambda.zero_()
            self.smear_gate.weight.uniform_(0.0, 0.02, generator=g)
        if self.config.backout:
            self.backout_lambda.fill_(0.2)
        if self.config.value_embeds:
            for ve in self.value_embeds.values():
                ve.weight.uniform_(-s, s, generator=g)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                loss_reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, vocab_size), or the cross-entropy loss when `targets` are given (-1 = ignore)."""
        cfg = self.config
        B, T = idx.shape
        T0 = 0 if kv_cache is None else kv_cache.pos
        if T0 + T > self.cos.size(1):
            raise ValueError(f"sequence of {T0 + T} tokens exceeds the rotary table of {self.cos.size(1)} positions")
        cos_sin = self.cos[:, T0:T0 + T], self.sin[:, T0:T0 + T]

        x = norm(self.transformer.wte(idx))
        if cfg.smear:
            x = self._smear(x, kv_cache)
        x0 = x
        x_backout = None
        for i, block in enumerate(self.transformer.h):
            if cfg.lambdas:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = None
            if cfg.value_embeds and str(i) in self.value_embeds:
                ve = self.value_embeds[str(i)](idx).to(x.dtype)
            x = block(x, ve, cos_sin, self.window_sizes[i], kv_cache)
            if i == cfg.n_layer // 2:
                x_backout = x
        if kv_cache is not None:
            kv_cache.pos += T
        if cfg.backout:
            x = x - self.backout_lambda.to(x.dtype) * x_backout
        x = norm(x)
        logits = self.lm_head(x)[..., : cfg.vocab_size].float()
        logits = cfg.softcap * torch.tanh(logits / cfg.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=loss_reduction)

    def _smear(self, x: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        # x[t] += smear_lambda * sigmoid(smear_gate(x[t][:24])) * x[t-1], using the pre-smear x[t-1]
        lam = self.smear_lambda.to(x.dtype)
        prev = None
        if kv_cache is not None:
            prev, kv_cache.prev_embedding = kv_cache.prev_embedding, x[:, -1:, :]
        if x.size(1) > 1:
            gate = lam * torch.sigmoid(self.smear_gate(x[:, 1:, :24]))
            x = torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], dim=1)
        elif prev is not None:
            x = x + lam * torch.sigmoid(self.smear_gate(x[:, :, :24])) * prev
        return x

    def get_device(self) -> torch.device:
        return self.transformer.wte.weight.device

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(self.config, batch_size, max_len, device=self.get_device(), dtype=self.lm_head.weight.dtype)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per group, as nanochat counts them for its scaling laws."""
        prefixes = {"transformer.wte": "wte", "transformer.h": "transformer_matrices", "lm_head": "lm_head",
                    "value_embeds": "value_embeds"}
        groups: dict[str, int] = {}
        for name, p in self.named_parameters():
            key = next((g for prefix, g in prefixes.items() if name.startswith(prefix)), "scalars")
            groups[key] = groups.get(key, 0) + p.numel()
        groups["total"] = sum(groups.values())
        return groups


def _window_sizes(config: GPTConfig) -> list[tuple[int, int]]:
    if not config.sliding_windows:
        return [(config.sequence_len * 10, 0)] * config.n_layer  # the whole rotary table: no window at all
    long_window = config.sequence_len
    short_window = -(-long_window // 4 // 128) * 128
    pattern = config.window_pattern.upper()
    sizes = [(short_window if pattern[i % len(pattern)] == "S" else long_window, 0) for i in range(config.n_layer)]
    sizes[-1] = (long_window, 0)
    return sizes


def _rotary_tables(config: GPTConfig, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    # always real CPU tensors, even while the model is built on the meta device
    head_dim = config.head_dim
    channels = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu")
    inv_freq = 1.0 / (config.rotary_base ** (channels / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device="cpu"), inv_freq)
    cos, sin = freqs.cos(), freqs.sin()
    if config.rotary_bf16:  # early nanochat kept these tables in bfloat16, even on CPU
        cos, sin = cos.bfloat16().float(), sin.bfloat16().float()
    return cos[None, :, None, :], sin[None, :, None, :]


# --------------------------------------------------------------------------- generation


def sample_next_token(logits: torch.Tensor, generator: torch.Generator | None, temperature: float = 0.0,
                      top_k: int | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) token ids: argmax at temperature 0, else seeded sampling (nanochat's rule)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    if top_k is not None and top_k > 0:
        values, indices = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)
        choice = torch.multinomial(F.softmax(values / temperature, dim=-1), 1, generator=generator)
        return indices.gather(1, choice)
    return torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)


@torch.inference_mode()
def generate(model: GPT, tokens: list[int], max_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             seed: int = 42, stop_tokens: set[int] | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield up to `max_tokens` new token ids after the prompt `tokens`.

    With `use_cache` the prompt is prefilled once and each new token costs one single-position
    forward pass through the KV cache; without it every step re-runs the whole sequence
    (slow, but the reference the cache must agree with). Generation stops after a token in
    `stop_tokens` (which is yielded).
    """
    if not tokens:
        raise ValueError("generate needs a non-empty prompt (start it with the BOS token)")
    device = model.get_device()
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    ids = torch.tensor([tokens], dtype=torch.long, device=device)
    cache = model.new_kv_cache(1, len(tokens) + max_tokens) if use_cache else None
    logits = model(ids, kv_cache=cache)[:, -1]
    for step in range(max_tokens):
        next_id = sample_next_token(logits, generator, temperature, top_k)
        token = int(next_id.item())
        yield token
        if (stop_tokens and token in stop_tokens) or step == max_tokens - 1:
            return
        if use_cache:
            logits = model(next_id, kv_cache=cache)[:, -1]
        else:
            ids = torch.cat([ids, next_id], dim=1)
            logits = model(ids)[:, -1]


# --------------------------------------------------------------------------- checkpoints


def detect_architecture(state_dict: dict[str, torch.Tensor], model_config: dict) -> GPTConfig:
    """The `GPTConfig` of a nanochat checkpoint: its meta `model_config` plus what its keys reveal."""
    unknown = set(model_config) - set(NANOCHAT_CONFIG_KEYS)
    if unknown:
        raise CheckpointError(
            f"model_config has keys saekit does not know: {sorted(unknown)} "
            f"(expected some of {list(NANOCHAT_CONFIG_KEYS)}); the checkpoint may come from a newer nanochat"
        )
    missing = [k for k in NANOCHAT_CONFIG_KEYS[:-1] if k not in model_config]
    if missing:
        raise CheckpointError(f"model_config lacks {missing}; found {model_config}")
    kwargs = {"window_pattern": "L", **model_config}  # no window_pattern = full context, as nanochat patches it
    wte = state_dict.get("transformer.wte.weight")
    if wte is None:
        raise CheckpointError("state dict has no transformer.wte.weight; is this a nanochat model checkpoint?")
    kwargs["padded_vocab_size"] = wte.shape[0]
    kwargs["lambdas"] = kwargs["sliding_windows"] = "resid_lambdas" in state_dict
    gates = [v for k, v in state_dict.items() if k.endswith("attn.ve_gate.weight")]
    kwargs["value_embeds"] = any(k.startswith("value_embeds.") for k in state_dict)
    if gates:
        kwargs["ve_gate_channels"] = gates[0].shape[1]
    modern_rotary = kwargs["value_embeds"] and kwargs.get("ve_gate_channels", 12) == 12
    kwargs["ve_gate_range"] = 3.0 if modern_rotary else 2.0
    kwargs["rotary_base"] = 100000.0 if modern_rotary else 10000.0
    kwargs["rotary_bf16"] = not modern_rotary
    kwargs["smear"] = "smear_gate.weight" in state_dict
    kwargs["backout"] = "backout_lambda" in state_dict
    kwargs["qk_scale"] = 1.2 if kwargs["smear"] else 1.0
    return GPTConfig(**kwargs)


def build_model(state_dict: dict[str, torch.Tensor], model_config: dict, overrides: dict | None = None) -> GPT:
    """A `GPT` holding `state_dict`, its architecture detected and optionally overridden."""
    # torch.compile prefixes keys with _orig_mod.; GPU checkpoints hold bfloat16 embeddings
    state_dict = {k.removeprefix("_orig_mod."): v.float() if v.dtype == torch.bfloat16 else v
                  for k, v in state_dict.items()}
    config = detect_architecture(state_dict, model_config)
    if overrides:
        bad = set(overrides) - {f.name for f in fields(GPTConfig)}
        if bad:
            valid = [f.name for f in fields(GPTConfig)]
            raise ValueError(f"unknown architecture overrides {sorted(bad)}; valid: {valid}")
        config = GPTConfig(**{**asdict(config), **overrides})
    with torch.device("meta"):
        model = GPT(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"state dict does not match a nanochat GPT with {config.nanochat_config()}: "
            f"missing keys {missing or 'none'}; unexpected keys {unexpected or 'none'}"
        )
    wrong = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(v.shape)}"
             for k, v in state_dict.items() if v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError("state dict tensor shapes do not match model_config: " + "; ".join(wrong))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def find_checkpoint_dir(path: str | os.PathLike, source: str = "base", model_tag: str | None = None) -> Path:
    """Resolve a checkpoint folder (holding `model_<step>.pt`) from itself or from nanochat's base dir.

    From a base dir, the largest depth (`d20` over `d12`) is chosen unless `model_tag` is given,
    exactly as nanochat does.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"expected a nanochat checkpoint directory or base directory, but {path} "
                                "does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"expected a directory holding model_<step>.pt files, found the file {path}")
    if _checkpoint_steps(path):
        return path
    if source not in CHECKPOINT_SOURCES:
        raise ValueError(f"source must be one of {list(CHECKPOINT_SOURCES)}, got {source!r}")
    checkpoints_dir = path / CHECKPOINT_SOURCES[source]
    if not checkpoints_dir.is_dir():
        raise FileNotFoundError(
            f"{path} holds no model_<step>.pt files and no {CHECKPOINT_SOURCES[source]}/ folder "
            f"(found: {sorted(p.name for p in path.iterdir())[:20] or 'an empty directory'})"
        )
    tags = sorted(p.name for p in checkpoints_dir.iterdir() if p.is_dir())
    if model_tag is None:
        if not tags:
            raise FileNotFoundError(f"no model folders (like d20) in {checkpoints_dir}")
        depths = [(int(m.group(1)), t) for t in tags if (m := re.fullmatch(r"d(\d+)", t))]
        model_tag = max(depths)[1] if depths else max(tags, key=lambda t: (checkpoints_dir / t).stat().st_mtime)
    checkpoint_dir = checkpoints_dir / model_tag
    if not checkpoint_dir.is_dir():
        raise FileNotFoundError(f"no model {model_tag!r} in {checkpoints_dir}; available: {tags}")
    if not _checkpoint_steps(checkpoint_dir):
        raise FileNotFoundError(f"{checkpoint_dir} holds no model_<step>.pt files")
    return checkpoint_dir


def checkpoint_steps(path: str | os.PathLike | None = None, source: str = "base",
                     model_tag: str | None = None) -> list[int]:
    """The steps saved for a checkpoint folder or base dir (as `load_model` resolves it); the embedded model's
    with no argument: its intermediate checkpoints and the final one."""
    return _checkpoint_steps(find_checkpoint_dir(DEFAULT_MODEL_DIR if path is None else path, source, model_tag))


def _checkpoint_steps(checkpoint_dir: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in checkpoint_dir.iterdir() if (m := re.fullmatch(r"model_(\d+)\.pt", p.name)))


def _find_tokenizer(checkpoint_dir: Path) -> Path:
    candidates = [checkpoint_dir / "tokenizer.pkl", checkpoint_dir / "tokenizer" / "tokenizer.pkl",
                  checkpoint_dir.parent.parent / "tokenizer" / "tokenizer.pkl"]
    if os.environ.get("NANOCHAT_BASE_DIR"):
        candidates.append(Path(os.environ["NANOCHAT_BASE_DIR"]) / "tokenizer" / "tokenizer.pkl")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "no tokenizer.pkl for this checkpoint; looked at " + ", ".join(str(c) for c in candidates)
        + " (pass tokenizer=PATH)"
    )


def load_model(path: str | os.PathLike | None = None, *, source: str = "base", model_tag: str | None = None,
               step: int | None = None, tokenizer: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               overrides: dict | None = None) -> tuple[GPT, Tokenizer]:
    """Load a nanochat model and its tokenizer; with no arguments, saekit's embedded TinyWorld model.

    `path` is a checkpoint folder (`.../base_checkpoints/d20`) or nanochat's base directory
    (`~/.cache/nanochat`), from which `source` (base/sft/rl), `model_tag` and `step` pick the
    checkpoint — by default the largest depth and the last step, as nanochat does. The tokenizer
    is found beside the checkpoint or in `<base>/tokenizer/` unless given.
    """
    checkpoint_dir = find_checkpoint_dir(DEFAULT_MODEL_DIR if path is None else path, source, model_tag)
    steps = _checkpoint_steps(checkpoint_dir)
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"no step {step} in {checkpoint_dir}; available steps: {steps}")
    model_path = checkpoint_dir / f"model_{step:06d}.pt"
    meta_path = checkpoint_dir / f"meta_{step:06d}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{model_path.name} has no {meta_path.name} beside it in {checkpoint_dir}")
    try:
        meta = json.loads(meta_path.read_text())
        model_config = meta["model_config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_path} is not a nanochat meta json with a model_config: {exc}") from exc
    try:
        state_dict = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {model_path} as a weights-only state dict: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{model_path} holds a {type(state_dict).__name__}, expected a state dict")
    model = build_model(state_dict, model_config, overrides).to(device)
    model.meta = meta
    model.name = "nanochat-tinyworld" if path is None else f"nanochat-{checkpoint_dir.name}"
    tok = load_tokenizer(tokenizer if tokenizer is not None else _find_tokenizer(checkpoint_dir))
    if tok.vocab_size != model.config.vocab_size:
        raise CheckpointError(
            f"tokenizer vocabulary ({tok.vocab_size} tokens) does not match the model's vocab_size "
            f"({model.config.vocab_size}); is the tokenizer from another run?"
        )
    return model, tok


def save_checkpoint(model: GPT, checkpoint_dir: str | os.PathLike, step: int, meta: dict | None = None) -> Path:
    """Write `model_<step>.pt` and `meta_<step>.json` in nanochat's layout (atomically)."""
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    model_path = checkpoint_dir / f"model_{step:06d}.pt"
    meta = {"step": step, **(meta or {}), "model_config": model.config.nanochat_config()}
    meta_path = checkpoint_dir / f"meta_{step:06d}.json"
    for path, write in ((model_path, lambda f: torch.save(model.state_dict(), f)),
                        (meta_path, lambda f: f.write(json.dumps(meta, indent=2).encode()))):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    return model_path
