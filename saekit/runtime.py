"""
Runtime interpretation: which SAE features are active on each token, while the model generates.

`stream` runs KV-cached generation (the same sampling as `saekit.generate`) with one or more SAEs
attached at their hook points and yields, for every generated token as it streams, a
`TokenFeatures`: the token and its strongest active latents, with their concept labels on
TinyWorld (`latent_labels` turns a `concept_recovery` report into one label per latent).

The SAEs only read: the model computes exactly what it computes without them, so a stream can run
inside `steer(...)` to watch a steered generation. Features are those *at the token's own
position* (what the token's residual stream carries, as on a dashboard), so each token is reported
after the forward pass that reads it. The cost is one encoder pass and a top-n over the newest
positions, read a few tokens at a time (`read_every`): a few percent of generation
(`benchmarks/bench_runtime.py`).
Special tokens get no features: SAEs are trained without them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from saekit.hooks import NANOCHAT_LAYOUT, HookLayout, capture
from saekit.nanochat import sample_next_token
from saekit.sae.base import SAE
from saekit.sae.relu import ReLUSAE
from saekit.sae.topk import TopKSAE

if TYPE_CHECKING:
    from saekit.evaluate import ConceptRecovery


class Feature(NamedTuple):
    """One active latent on one token."""

    hook: str
    latent: int
    activation: float
    label: str | None  # its concept on TinyWorld, e.g. "animal F1 0.44" (None: unlabelled)

    def __str__(self) -> str:
        return f"{self.latent} {self.activation:.1f}" + (f" [{self.label}]" if self.label else "")


class TokenFeatures(NamedTuple):
    """A token of the sequence and its strongest active SAE latents (per SAE, largest first)."""

    position: int  # index in the whole sequence, prompt included
    token_id: int
    token: str
    generated: bool  # False for prompt tokens (see `include_prompt`)
    features: tuple[Feature, ...]

    def __str__(self) -> str:
        return f"{self.token!r:>14}  " + " | ".join(str(f) for f in self.features)


def latent_labels(recovery: ConceptRecovery, min_f1: float = 0.2) -> list[str | None]:
    """One label per latent from a `ConceptRecovery`: the concept it detects best, with that F1
    (None where even the best F1 is below `min_f1`)."""
    from saekit.world import CONCEPTS

    f1 = recovery.f1
    best = f1.argmax(axis=1)
    return [f"{CONCEPTS[c].name} F1 {f1[i, c]:.2f}" if f1[i, c] >= min_f1 else None for i, c in enumerate(best)]


class _Reader:
    """Encodes the newest position(s) at one SAE's hook point and keeps the top-n latents."""

    def __init__(self, sae: SAE, labels, top_n: int):
        if not sae.cfg.hook_name:
            raise ValueError("an SAE attached to a stream needs cfg.hook_name (where it reads)")
        if labels is not None and not isinstance(labels, (list, tuple)):
            labels = latent_labels(labels)  # a ConceptRecovery
        if labels is not None and len(labels) != sae.cfg.d_sae:
            raise ValueError(f"expected one label per latent ({sae.cfg.d_sae}), found {len(labels)}")
        self.sae, self.hook, self.labels = sae.eval(), sae.cfg.hook_name, labels
        self.top_n = min(top_n, sae.cfg.k if sae.architecture == "topk" else sae.cfg.d_sae)
        # ReLU and TopK codes need no full encode: their n largest latents are the n largest
        # pre-activations (kept where positive), and the encoder's bias can be folded once
        self.fast = type(sae).encode in (ReLUSAE.encode, TopKSAE.encode)
        if self.fast:
            with torch.no_grad():
                self.W_enc = sae.W_enc.detach()
                self.bias = (sae.b_enc - sae.b_dec @ sae.W_enc).detach()

    def read(self, x: torch.Tensor) -> list[list[Feature]]:
        """x: [T, d_in] -> per position, its active latents among the top n."""
        if x.shape[-1] != self.sae.cfg.d_in:
            raise ValueError(f"the SAE reads {self.sae.cfg.d_in}-wide activations, but {self.hook} is "
                             f"{x.shape[-1]} wide; is it the SAE of another hook point or model?")
        x = x.to(self.sae.W_enc.dtype)  # a bfloat16 model, a float32 SAE
        code = torch.addmm(self.bias, x, self.W_enc) if self.fast else self.sae.encode(x)
        values, latents = code.topk(self.top_n, dim=-1)
        out = []
        for vals, lats in zip(values.tolist(), latents.tolist()):
            labels = self.labels
            out.append([Feature(self.hook, i, v, labels[i] if labels is not None else None)
                        for v, i in zip(vals, lats) if v > 0])
        return out


@torch.inference_mode()
def stream(model: torch.nn.Module, tokenizer, prompt: str | list[int], saes: SAE | Sequence[SAE], *,
           labels: ConceptRecovery | Sequence | None = None, top_n: int = 3, max_tokens: int = 32,
           temperature: float = 0.0, top_k: int | None = None, seed: int = 42, stop_tokens: set[int] | None = None,
           include_prompt: bool = False, read_every: int = 16,
           layout: HookLayout = NANOCHAT_LAYOUT) -> Iterator[TokenFeatures]:
    """Generate after `prompt` (text, BOS prepended; or ids) and yield each new token with its top features.

    `saes`: one SAE, or a list of them (each reads at its `cfg.hook_name`); `labels`: for one SAE,
    a `ConceptRecovery` or a list of d_sae labels; for a list of SAEs, a list with one such (or
    None) per SAE.
    Sampling is `saekit.generate`'s (greedy at temperature 0, else seeded); generation stops after
    a token in `stop_tokens` (default: BOS, which starts another document). With `include_prompt`,
    the prompt's tokens are reported first. The model is hooked (read-only) while the stream runs;
    a finished, broken-off or closed stream leaves it as it was.

    Features are read `read_every` tokens at a time: one encoder call, top-n and concatenation per
    burst instead of per token. Between bursts the model's own weights push the encoder's out of the
    CPU's caches, so each burst reads them from memory again: the fewer bursts, the cheaper. Tokens
    then arrive in bursts of that many (16 tokens of the default model take about 25 ms on a CPU,
    still a smooth stream to a reader); the stream runs up to `read_every - 1` tokens ahead of what it
    has yielded. `read_every=1` yields each token as soon as it exists.

        for t in stream(model, tokenizer, "Once upon a time", sae, labels=recovery):
            print(t)
    """
    if isinstance(saes, SAE):
        saes, labels = [saes], [labels]
    saes = list(saes)
    if not saes:
        raise ValueError("stream needs at least one SAE")
    if labels is not None and not isinstance(labels, (list, tuple)):
        raise ValueError("for a list of SAEs, labels must be a list with one entry (a ConceptRecovery, a list of "
                         f"labels or None) per SAE; found {type(labels).__name__}")
    labels = [None] * len(saes) if labels is None else list(labels)
    if len(labels) != len(saes):
        raise ValueError(f"expected labels for each of the {len(saes)} SAEs, found {len(labels)}")
    if top_n <= 0 or max_tokens <= 0 or read_every <= 0:
        raise ValueError(f"top_n, max_tokens and read_every must be positive, got {top_n}, {max_tokens} and "
                         f"{read_every}")
    readers = [_Reader(sae, lab, top_n) for sae, lab in zip(saes, labels)]
    ids = tokenizer.encode(prompt, prepend_bos=True) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise ValueError("stream needs a non-empty prompt (start it with the BOS token)")
    stop = {tokenizer.bos_id} if stop_tokens is None else set(stop_tokens)
    special = tokenizer.special_id_set
    device = model.get_device()
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    cache = model.new_kv_cache(1, len(ids) + max_tokens)

    def report(position: int, token: int, per_reader: list[list[Feature]], generated: bool) -> TokenFeatures:
        features = () if token in special else tuple(f for found in per_reader for f in found)
        return TokenFeatures(position, token, tokenizer.token_str(token), generated, features)

    with capture(model, list(dict.fromkeys(r.hook for r in readers)), layout=layout) as acts:
        logits = model(torch.tensor([ids], device=device), kv_cache=cache)[:, -1]
        if include_prompt:
            found = [r.read(acts[r.hook][0]) for r in readers]
            for pos, token in enumerate(ids):
                yield report(pos, token, [f[pos] for f in found], False)
        pending: list[int] = []  # generated tokens whose features are not read yet
        unread: list[list[torch.Tensor]] = [[] for _ in readers]  # their activations, per reader
        for step in range(max_tokens):
            next_id = sample_next_token(logits, generator, temperature, top_k)
            token = int(next_id.item())
            logits = model(next_id, kv_cache=cache)[:, -1]  # the pass that reads the token's own position
            pending.append(token)
            for reader, rows in zip(readers, unread):
                rows.append(acts[reader.hook])  # [1, 1, d_in]: this pass's one position
            if len(pending) == read_every or token in stop or step == max_tokens - 1:
                found = [r.read((rows[0] if len(rows) == 1 else torch.cat(rows, dim=1))[0])
                         for r, rows in zip(readers, unread)]
                first = len(ids) + step - len(pending) + 1
                for i, pending_token in enumerate(pending):
                    yield report(first + i, pending_token, [f[i] for f in found], True)
                pending.clear()
                for rows in unread:
                    rows.clear()
            if token in stop:
                return
