"""
Back-of-the-envelope plans for a bigger nanochat model: disk, accelerator memory and time for each stage.

Moving from the embedded model (1.8M parameters, d_model 128) to a real `d20` (about 560M, d_model
1280) multiplies every cost, and not by the same factor: collection scales with the model, training
with the SAE, the dashboard with both. `plan_run` counts, from shapes alone:

- FLOPs: 2 per multiply-add. A transformer layer costs 2 x (its matrix parameters) per token plus
  attention's 4 x d_model x (keys attended) per token; collection stops after the hooked block
  (`run_until`), evaluation and dashboards run the whole model. A TopK SAE step costs the dense
  encoder (2 d n) plus its backward and the decoder on k latents only (8 d k: `saekit.sae.sparse`); a
  dense SAE, encoder and decoder with their gradients (12 d n).
- bytes: the store is tokens x d_in x the storage dtype, exactly; an SAE in training holds 16 bytes per
  parameter (float32 weights, gradients, two Adam moments) plus its batch's pre-activations.
- seconds: FLOPs / `flops_per_second`, the *achieved* rate you expect (peak x utilisation). Reading
  the store, Python overhead and top-k selection are not counted, so read times as lower bounds.

The numbers are estimates; `11_scaling_to_d20` checks the byte counts against real stores and the
time model against this machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from saekit.nanochat import GPTConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
EVAL_ROWS = 8  # rows per spliced-model batch in evaluation: their float32 logits dominate its memory


def nanochat_config(depth: int, vocab_size: int = 65536, sequence_len: int = 2048,
                    window_pattern: str = "SSSL") -> GPTConfig:
    """The model nanochat's `base_train --depth N` builds: width 64 x depth, 128-dim heads, no GQA."""
    n_embd = 64 * depth
    n_head = max(1, n_embd // 128)
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth, n_head=n_head,
                     n_kv_head=n_head, n_embd=n_embd, window_pattern=window_pattern)


def layer_matrix_params(config: GPTConfig) -> int:
    """Matrix parameters of one block (attention q, k, v, out and the 4x MLP): what a token multiplies through."""
    d, kv = config.n_embd, config.n_kv_head * (config.n_embd // config.n_head)
    return d * d * 2 + 2 * d * kv + 8 * d * d


def attention_flops_per_token(config: GPTConfig, context: int | None = None) -> float:
    """One block's attention scores and weighted sum for one token: causal, so on average half the row is attended."""
    attended = min(context or config.sequence_len, config.sequence_len) / 2
    return 4 * config.n_embd * attended


def forward_flops_per_token(config: GPTConfig, layers: int | None = None, context: int | None = None,
                            logits: bool = True) -> float:
    """FLOPs for one token through the first `layers` blocks (all by default), with or without the unembedding."""
    layers = config.n_layer if layers is None else layers
    flops = layers * (2 * layer_matrix_params(config) + attention_flops_per_token(config, context))
    return flops + (2 * config.n_embd * config.padded_vocab_size if logits else 0)


@dataclass
class Stage:
    name: str
    flops: float
    memory_bytes: float  # peak accelerator memory, roughly
    disk_bytes: float  # what the stage writes

    def seconds(self, flops_per_second: float) -> float:
        return self.flops / flops_per_second


@dataclass
class RunPlan:
    stages: list[Stage]

    def table(self, flops_per_second: float) -> str:
        """The plan as aligned text: FLOPs, memory, disk and estimated time per stage."""
        lines = [f"{'stage':<10} {'FLOPs':>9} {'memory':>9} {'disk':>9} {'time':>9}"]
        for s in self.stages:
            lines.append(f"{s.name:<10} {s.flops:>9.2e} {_size(s.memory_bytes):>9} {_size(s.disk_bytes):>9} "
                         f"{_duration(s.seconds(flops_per_second)):>9}")
        total = sum(s.seconds(flops_per_second) for s in self.stages)
        lines.append(f"{'total':<10} {'':>9} {'':>9} {_size(sum(s.disk_bytes for s in self.stages)):>9} "
                     f"{_duration(total):>9}")
        return "\n".join(lines)


def sae_train_flops_per_token(d_in: int, d_sae: int, k: int | None) -> float:
    """One training token through an SAE: sparse decoding for the TopK family (k given), dense otherwise."""
    return 2 * d_in * d_sae + 8 * d_in * k if k else 12 * d_in * d_sae


def sae_parameters(d_in: int, d_sae: int) -> int:
    return 2 * d_in * d_sae + d_sae + d_in


def plan_run(config: GPTConfig, layer: int, d_sae: int, k: int | None = 32, collect_tokens: int = 100_000_000,
             train_tokens: int | None = None, stats_tokens: int = 10_000_000, eval_tokens: int = 1_000_000,
             store_dtype: str = "bfloat16", context: int | None = None, batch_rows: int = 64,
             batch_size: int = 4096) -> RunPlan:
    """Costs of collect -> train -> eval -> dashboard for an SAE at block `layer`'s output."""
    if store_dtype not in DTYPE_BYTES:
        raise ValueError(f"store_dtype must be one of {list(DTYPE_BYTES)}, got {store_dtype!r}")
    if not 0 <= layer < config.n_layer:
        raise ValueError(f"layer must be in [0, {config.n_layer}), got {layer}")
    d, context = config.n_embd, context or config.sequence_len
    train_tokens = collect_tokens if train_tokens is None else train_tokens
    model_bytes = 4 * sum(_model_parameter_counts(config))  # float32 parameters under bfloat16 autocast
    row_bytes = batch_rows * context * 2 * (8 * d)  # bfloat16 transients of one block: the MLP's 4d hidden, twice
    sae_bytes = 16 * sae_parameters(d, d_sae) + batch_size * d_sae * 4 * 3  # pre-acts, code, their gradient
    encode = 2 * d * d_sae
    return RunPlan([
        Stage("collect", collect_tokens * forward_flops_per_token(config, layer + 1, context, logits=False),
              model_bytes + row_bytes, collect_tokens * d * DTYPE_BYTES[store_dtype]),
        Stage("train", train_tokens * sae_train_flops_per_token(d, d_sae, k), sae_bytes,
              sae_parameters(d, d_sae) * 4),
        Stage("eval", eval_tokens * (forward_flops_per_token(config, context=context) + 2 * encode),
              model_bytes + row_bytes + EVAL_ROWS * context * config.padded_vocab_size * 4, 0),
        Stage("dashboard", stats_tokens * (forward_flops_per_token(config, layer + 1, context, logits=False) + encode)
              + 2 * d_sae * d * config.padded_vocab_size, model_bytes + row_bytes, 0),
    ])


def _model_parameter_counts(config: GPTConfig) -> tuple[int, int, int]:
    """Embedding, matrix and value-embedding parameters (the per-layer scalars and gates are negligible)."""
    embed = 2 * config.padded_vocab_size * config.n_embd  # wte and lm_head
    value_embeds = 0
    if config.value_embeds:
        kv = config.n_kv_head * (config.n_embd // config.n_head)
        value_embeds = sum(1 for i in range(config.n_layer) if i % 2 == (config.n_layer - 1) % 2) * \
            config.padded_vocab_size * kv
    return embed, config.n_layer * layer_matrix_params(config), value_embeds


def model_parameters(config: GPTConfig) -> int:
    """Parameters of a nanochat model with this config (without the per-layer scalars and gates)."""
    return sum(_model_parameter_counts(config))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
