"""
Steering with SAE latents: add, clamp or ablate a feature inside a running model, and measure the effect.

Three interventions, each a context manager that hooks the model for the `with` block and leaves
it exactly as it was afterwards (also when the block raises):

- `steer`: add `strength x scale x d_i` to the activation at the SAE's hook point, at every
  position. d_i is latent i's decoder row; the scale makes strengths comparable across latents:
  the latent's largest activation over a store (`relative_to="max"`, so strength 1 is "as if the
  latent fired at its maximum"), or the activation's own norm (`relative_to="norm"`, with d_i
  normalised, so strength 0.5 adds half of ||x||).
- `clamp`: set latent i of the code to a value inside encode -> decode, keeping the SAE's error
  term, so nothing but that latent changes. Since decoding is linear,

      decode(f') + (x - decode(f)) = x + (f'_i - f_i) d_i

  which is how it is computed: a clamp to the latent's natural value changes nothing, bit for bit.
- `ablate`: clamp latents to zero.

`intervene(model, Steer(...), Clamp(...), Ablate(...))` applies several at once, at one or several
hook points. Every edit at a hook point reads the activation as it arrives there (before any other
edit at that point), and their changes add up.

Measuring steering on TinyWorld, where generations can be labelled with the world's own concept
labeller: `concept_rate` (share of words that carry a concept), `dose_response` (concept rate and
a fluency proxy, the unsteered model's loss on the steered text, against strength; generations
sampled with fixed seeds, several per batch by `sample_continuations`) and `output_scores` (does
amplifying a latent raise the probability of its own logit-lens tokens? Arad et al. 2025: latents
that do are the ones that steer; or of a concept's tokens, `concept_tokens`). `logit_lens` and
`lens_concept_share` say what a latent writes, as `concept_recovery` says what it reads.
`generate_text` and `chat_answer` produce the text to look at, steered or not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from saekit.hooks import NANOCHAT_LAYOUT, HookLayout, patch, resolve
from saekit.nanochat import generate, sample_next_token
from saekit.sae.base import SAE

RELATIVE_TO = ("max", "norm", "raw")

# --------------------------------------------------------------------------- the interventions


def _check_latents(sae: SAE, latents: Sequence[int]) -> None:
    bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise ValueError(f"latent index {bad[0]} is out of range: this SAE has {sae.cfg.d_sae} latents")


def _scale(sae: SAE, latent: int, amount: float, relative_to: str, max_acts: torch.Tensor | None,
           allowed: tuple[str, ...], what: str) -> float:
    """`amount` in the latent's raw units, for the "max" and "raw" conventions."""
    if relative_to not in allowed:
        raise ValueError(f"{what}: relative_to must be one of {list(allowed)}, got {relative_to!r}")
    if not np.isfinite(amount):
        raise ValueError(f"{what}: expected a finite number, got {amount}")
    if relative_to == "raw":
        return float(amount)
    if relative_to == "max":
        if max_acts is None:
            other = " or ".join(repr(a) for a in allowed if a != "max")
            raise ValueError(f"{what} is relative to the latent's max activation: pass "
                             f"max_acts=max_activations(sae, store), or relative_to={other}")
        if max_acts.shape != (sae.cfg.d_sae,):
            raise ValueError(f"{what}: max_acts should have shape ({sae.cfg.d_sae},), found {tuple(max_acts.shape)}")
        return float(amount) * float(max_acts[latent])
    return float(amount)  # "norm": scaled per position at run time


@dataclass(frozen=True, eq=False)
class Steer:
    """Add `strength` x (max activation of `latent` | ||x||) x its decoder direction at every position."""

    sae: SAE
    latent: int
    strength: float
    relative_to: str = "max"  # "max" (needs max_acts) or "norm"
    max_acts: torch.Tensor | None = field(default=None, repr=False)
    hook: str | None = None  # default: the SAE's own hook point


@dataclass(frozen=True, eq=False)
class Clamp:
    """Set `latent` to `value` (x its max activation, or raw) in the code, keeping the SAE's error term."""

    sae: SAE
    latent: int
    value: float
    relative_to: str = "max"  # "max" (needs max_acts) or "raw"
    max_acts: torch.Tensor | None = field(default=None, repr=False)
    hook: str | None = None


@dataclass(frozen=True, eq=False)
class Ablate:
    """Set `latents` to zero in the code, keeping the SAE's error term."""

    sae: SAE
    latents: int | Sequence[int]
    hook: str | None = None


Edit = Steer | Clamp | Ablate


def _hook_of(edit: Edit) -> str:
    hook = edit.hook or edit.sae.cfg.hook_name
    if not hook:
        raise ValueError(f"{type(edit).__name__}: the SAE has no hook_name; pass hook='blocks.L.hook_...'")
    return hook


class _HookEdits:
    """Every edit at one hook point, precomputed into a few tensors, applied in one function."""

    def __init__(self, hook: str, edits: list[Edit]):
        self.hook = hook
        fixed = []  # steering vectors that do not depend on x
        self.norm_steers: list[torch.Tensor] = []  # strength x unit direction, times ||x|| at run time
        codes: dict[int, tuple[SAE, dict[int, float]]] = {}  # per SAE: latent -> clamped value
        for edit in edits:
            sae = edit.sae
            if isinstance(edit, Steer):
                latent = int(edit.latent)
                _check_latents(sae, [latent])
                amount = _scale(sae, latent, edit.strength, edit.relative_to, edit.max_acts, ("max", "norm"),
                                "steer strength")
                direction = sae.W_dec[latent].detach()
                if edit.relative_to == "norm":
                    self.norm_steers.append(amount * F.normalize(direction, dim=0))
                else:
                    fixed.append(amount * direction)
                continue
            if isinstance(edit, Clamp):
                latent = int(edit.latent)
                _check_latents(sae, [latent])
                values = {latent: _scale(sae, latent, edit.value, edit.relative_to, edit.max_acts, ("max", "raw"),
                                         "clamp value")}
            elif isinstance(edit, Ablate):
                latents = [int(i) for i in torch.as_tensor(edit.latents).flatten().tolist()]
                _check_latents(sae, latents)
                values = dict.fromkeys(latents, 0.0)
            else:
                raise TypeError(f"expected Steer, Clamp or Ablate edits, found {type(edit).__name__}")
            _, clamped = codes.setdefault(id(sae), (sae, {}))
            twice = set(values) & set(clamped)
            if twice:
                raise ValueError(f"latent {min(twice)} at {hook} is clamped or ablated twice")
            clamped.update(values)
        self.saes = [edit.sae for edit in edits]
        self.fixed = torch.stack(fixed).sum(0) if fixed else None
        self.clamps = []
        for sae, clamped in codes.values():
            sae.eval()  # codes as at inference (BatchTopK's batch-level choice is for training only)
            index = torch.tensor(list(clamped), dtype=torch.long, device=sae.W_dec.device)
            target = torch.tensor(list(clamped.values()), dtype=sae.W_dec.dtype, device=sae.W_dec.device)
            self.clamps.append((sae, index, target, sae.W_dec[index].detach()))

    def check_hook(self, model, layout: HookLayout) -> None:
        resolve(model, self.hook, layout)  # a clear error for an unknown hook point, before anything runs

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for sae in self.saes:
            if x.shape[-1] != sae.cfg.d_in:
                raise ValueError(f"the SAE reads {sae.cfg.d_in}-wide activations, but {self.hook} is "
                                 f"{x.shape[-1]} wide; is it the SAE of another hook point or model?")
        out = x
        with torch.no_grad():
            for sae, index, target, rows in self.clamps:
                natural = sae.encode(x.to(rows.dtype))[..., index]
                out = out + (target.to(x) - natural) @ rows.to(x)
            if self.fixed is not None:
                out = out + self.fixed.to(x)
            for vector in self.norm_steers:
                out = out + x.norm(dim=-1, keepdim=True) * vector.to(x)
        return out


@contextmanager
def intervene(model: torch.nn.Module, *edits: Edit | Sequence[Edit],
              layout: HookLayout = NANOCHAT_LAYOUT) -> Iterator[None]:
    """Apply several `Steer` / `Clamp` / `Ablate` edits at once, at one or more hook points.

        with intervene(model, Steer(sae, 17, 4.0, max_acts=maxes), Ablate(sae, [3, 9])):
            text = generate_text(model, tokenizer, "Once upon a time")

    The model is hooked only inside the block and restored exactly afterwards, also on exceptions.
    """
    flat: list[Edit] = []
    for edit in edits:
        flat.extend(edit if isinstance(edit, (list, tuple)) else [edit])
    if not flat:
        raise ValueError("intervene needs at least one Steer, Clamp or Ablate edit")
    by_hook: dict[str, list[Edit]] = {}
    for edit in flat:
        by_hook.setdefault(_hook_of(edit), []).append(edit)
    editors = [_HookEdits(hook, group) for hook, group in by_hook.items()]
    for editor in editors:
        editor.check_hook(model, layout)
    with ExitStack() as stack:
        for editor in editors:
            stack.enter_context(patch(model, editor.hook, editor, layout))
        yield


def steer(model: torch.nn.Module, sae: SAE, latent: int, strength: float, *, relative_to: str = "max",
          max_acts: torch.Tensor | None = None, hook: str | None = None) -> AbstractContextManager[None]:
    """Context manager: add `strength` x (the latent's max activation, or ||x||) x its decoder direction."""
    return intervene(model, Steer(sae, latent, strength, relative_to, max_acts, hook))


def clamp(model: torch.nn.Module, sae: SAE, latent: int, value: float, *, relative_to: str = "max",
          max_acts: torch.Tensor | None = None, hook: str | None = None) -> AbstractContextManager[None]:
    """Context manager: hold `latent` at `value` (x its max activation, or raw) with the SAE's error kept."""
    return intervene(model, Clamp(sae, latent, value, relative_to, max_acts, hook))


def ablate(model: torch.nn.Module, sae: SAE, latents: int | Sequence[int], *,
           hook: str | None = None) -> AbstractContextManager[None]:
    """Context manager: zero `latents` in the code with the SAE's error kept."""
    return intervene(model, Ablate(sae, latents, hook))


@torch.no_grad()
def max_activations(sae: SAE, store, hook: str | None = None, n_tokens: int = 200_000,
                    batch_size: int = 8192) -> torch.Tensor:
    """Each latent's largest activation over the first `n_tokens` of a store (raw-space SAE): [d_sae]."""
    from saekit.evaluate import _raw_batches

    sae = sae.eval()
    best = torch.zeros(sae.cfg.d_sae)
    seen = 0
    for x in _raw_batches(store, hook, n_tokens, batch_size):
        best = torch.maximum(best, sae.encode(x).amax(dim=0).float())
        seen += len(x)
    if seen == 0:
        raise ValueError("max_activations: the store gave no tokens")
    return best


# --------------------------------------------------------------------------- text to look at


def generate_text(model: torch.nn.Module, tokenizer, prompt: str | list[int], max_tokens: int = 32,
                  temperature: float = 0.0, seed: int = 42, top_k: int | None = None,
                  stop_tokens: set[int] | None = None) -> str:
    """The model's continuation of `prompt` (text, BOS prepended; or token ids), as text."""
    ids = tokenizer.encode(prompt, prepend_bos=True) if isinstance(prompt, str) else list(prompt)
    stop = tokenizer.special_id_set if stop_tokens is None else stop_tokens
    out = list(generate(model, ids, max_tokens, temperature=temperature, top_k=top_k, seed=seed, stop_tokens=stop))
    return tokenizer.decode([t for t in out if t not in tokenizer.special_id_set])


def chat_answer(model: torch.nn.Module, tokenizer, question: str | list[dict], max_tokens: int = 48,
                temperature: float = 0.0, seed: int = 42) -> str:
    """The assistant's answer to `question` (or to a conversation ending in a user message), in nanochat's
    chat format; use it inside `steer(...)` to steer the answer."""
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else list(question)
    ids = tokenizer.render_chat(messages, open_assistant_turn=True)
    return generate_text(model, tokenizer, ids, max_tokens, temperature, seed,
                         stop_tokens={tokenizer.special_ids["<|assistant_end|>"]})


# --------------------------------------------------------------------------- measuring steering

_WORD = re.compile(r"\w+")


def concept_rate(texts: str | Sequence[str], concept: str) -> float:
    """Share of the words of `texts` that carry `concept`, as TinyWorld's labeller (`label_text`) finds it."""
    from saekit.world import CONCEPT_INDEX, label_text

    if concept not in CONCEPT_INDEX:
        raise ValueError(f"unknown concept {concept!r}; TinyWorld's concepts are {list(CONCEPT_INDEX)}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    words = hits = 0
    for text in texts:
        inside = np.zeros(len(text) + 1, dtype=np.int32)
        for start, end, name in label_text(text):
            if name == concept:
                inside[start] += 1
                inside[end] -= 1
        covered = np.cumsum(inside) > 0
        for m in _WORD.finditer(text):
            words += 1
            hits += bool(covered[m.start():m.end()].any())
    return hits / words if words else 0.0


@torch.no_grad()
def continuation_loss(model: torch.nn.Module, prompt_ids: list[int], continuation_ids: list[int]) -> float:
    """Mean next-token loss (nats) of the model on `continuation_ids` after `prompt_ids`."""
    if not continuation_ids:
        return float("nan")
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + continuation_ids], device=device)
    targets = torch.full_like(ids, -1)
    targets[0, len(prompt_ids) - 1:-1] = ids[0, len(prompt_ids):]
    return float(model(ids, targets=targets))


@torch.no_grad()
def sample_continuations(model: torch.nn.Module, ids: list[int], seeds: Sequence[int], max_tokens: int,
                         temperature: float = 1.0, stop_tokens: set[int] = frozenset()) -> list[list[int]]:
    """One continuation of the prompt `ids` per seed, generated as one batch through the KV cache: row r
    samples from its own generator seeded with seeds[r], as `generate(..., seed=seeds[r])` does (the same
    tokens, up to the rounding of batched arithmetic), and ends after a token in `stop_tokens`. On a CPU
    a small batch costs about what one sequence does."""
    if not seeds or not ids or max_tokens <= 0:
        raise ValueError(f"sample_continuations needs seeds, a prompt and max_tokens > 0; got {len(seeds)} seeds, "
                         f"{len(ids)} prompt tokens, max_tokens={max_tokens}")
    device = model.get_device()
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    cache = model.new_kv_cache(len(seeds), len(ids) + max_tokens)
    logits = model(torch.tensor([ids] * len(seeds), device=device), kv_cache=cache)[:, -1]
    out: list[list[int]] = [[] for _ in seeds]
    done = [False] * len(seeds)
    for step in range(max_tokens):
        next_ids = torch.cat([sample_next_token(logits[r:r + 1], g, temperature) for r, g in enumerate(generators)])
        for r, token in enumerate(next_ids[:, 0].tolist()):
            if not done[r]:
                out[r].append(token)
                done[r] = token in stop_tokens
        if all(done) or step == max_tokens - 1:
            break
        logits = model(next_ids, kv_cache=cache)[:, -1]
    return out


DEFAULT_PROMPTS = ("Once upon a time", "Mia went to the park.", "Tom and Ivy met at the river.\n",
                   "Here are some facts.\n")


@dataclass
class DoseResponse:
    """A concept's rate in steered generations, and their fluency, at each steering strength."""

    concept: str
    latent: int
    strengths: list[float]
    rates: list[float]  # share of generated words that carry the concept
    losses: list[float]  # the unsteered model's mean loss (nats/token) on the steered continuations
    texts: list[list[str]]  # per strength, every continuation (prompt x seed)

    def table(self) -> str:
        lines = [f"latent {self.latent} -> {self.concept}", f"{'strength':>9} {'rate':>7} {'loss':>7}  example"]
        for s, r, loss, texts in zip(self.strengths, self.rates, self.losses, self.texts):
            lines.append(f"{s:>9g} {r:>7.1%} {loss:>7.2f}  {texts[0][:60]!r}")
        return "\n".join(lines)

    def plot(self, ax=None):
        """Concept rate (left axis) and the fluency proxy (right axis) against strength."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots()[1]
        ax.plot(self.strengths, self.rates, "o-", color="tab:blue")
        ax.set(xlabel="steering strength", ylabel=f"{self.concept} rate", title=f"steering latent {self.latent}",
               ylim=(0, 1))
        ax.tick_params(axis="y", colors="tab:blue")
        loss_ax = ax.twinx()
        loss_ax.plot(self.strengths, self.losses, "s--", color="tab:red")
        loss_ax.set_ylabel("clean model's loss on the text (nats)", color="tab:red")
        loss_ax.set_ylim(bottom=0)
        loss_ax.tick_params(axis="y", colors="tab:red")
        return ax


def dose_response(model: torch.nn.Module, tokenizer, sae: SAE, latent: int, concept: str,
                  strengths: Sequence[float] = (0, 0.25, 0.5, 0.75, 1.0, 1.5), *, max_acts: torch.Tensor | None = None,
                  relative_to: str = "max", prompts: Sequence[str] = DEFAULT_PROMPTS,
                  seeds: Sequence[int] = (0, 1, 2), max_tokens: int = 24, temperature: float = 1.0,
                  hook: str | None = None) -> DoseResponse:
    """Steer `latent` at each strength and count `concept` in the generations (prompt x seed, sampled at
    `temperature` with fixed seeds, so the result is deterministic); fluency is the unsteered model's loss
    on the steered continuations."""
    if not prompts or not seeds:
        raise ValueError("dose_response needs at least one prompt and one seed")
    prompt_ids = [tokenizer.encode(p, prepend_bos=True) for p in prompts]
    rates, losses, texts = [], [], []
    for strength in strengths:
        runs = []
        with steer(model, sae, latent, strength, relative_to=relative_to, max_acts=max_acts, hook=hook):
            for ids in prompt_ids:
                for out in sample_continuations(model, ids, seeds, max_tokens, temperature, {tokenizer.bos_id}):
                    runs.append((ids, [t for t in out if t not in tokenizer.special_id_set]))
        generated = [tokenizer.decode(out) for _, out in runs]
        rates.append(concept_rate(generated, concept))
        losses.append(float(np.nanmean([continuation_loss(model, ids, out) for ids, out in runs])))
        texts.append(generated)
    return DoseResponse(concept, int(latent), [float(s) for s in strengths], rates, losses, texts)


def logit_lens(model: torch.nn.Module, sae: SAE, hook: str | None = None) -> torch.Tensor:
    """Each decoder direction, carried to the residual stream, read through the unembedding: [d_sae, vocab]
    logits (the direct effect only; the layers after the hook point are what `output_scores` adds)."""
    point, module = resolve(model, hook or sae.cfg.hook_name)
    directions = sae.W_dec.detach().float()
    if point.side == "input" and isinstance(module, torch.nn.Linear):  # mlp.hook_post: through c_proj
        directions = directions @ module.weight.detach().float().T.to(directions.device)
    unembed = model.lm_head.weight.detach().float()[:model.config.vocab_size].to(directions.device)
    if unembed.shape[1] != directions.shape[1]:
        raise ValueError(f"decoder directions at {point.name} are {directions.shape[1]} wide, the unembedding reads "
                         f"{unembed.shape[1]}: the logit lens needs a residual-stream hook point")
    return directions @ unembed.T


def concept_tokens(tokenizer, concept: str) -> list[int]:
    """The ids of the tokens that are, on their own, a word of the lexical `concept` (" fox", " owls" for animal)."""
    from saekit.world import CONCEPTS, label_text

    lexical = [c.name for c in CONCEPTS if c.kind == "lexical"]
    if concept not in lexical:
        raise ValueError(f"concepts can only be read off single tokens for lexical concepts ({', '.join(lexical)}), "
                         f"got {concept!r}")
    return [i for i in range(tokenizer.vocab_size) if not tokenizer.is_special(i)
            and any(c == concept for _, _, c in label_text(tokenizer.token_str(i).strip()))]


def lens_concept_share(model: torch.nn.Module, tokenizer, sae: SAE, concept: str,
                       top_tokens: int = 10) -> torch.Tensor:
    """Per latent, the share of its `top_tokens` logit-lens tokens that carry the lexical `concept`: what a
    latent *writes*, next to `concept_recovery`'s F1 for what it *reads*. [d_sae]"""
    carries = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    carries[concept_tokens(tokenizer, concept)] = True
    top = logit_lens(model, sae).topk(top_tokens, dim=-1).indices.cpu()
    return carries[top].float().mean(dim=-1)


@torch.no_grad()
def output_scores(model: torch.nn.Module, tokenizer, sae: SAE, latents: Sequence[int] | None = None, *,
                  strength: float = 1.0, relative_to: str = "max", max_acts: torch.Tensor | None = None,
                  source="tinyworld:1", n_rows: int = 4, context_size: int = 32, top_tokens: int = 10,
                  tokens: Sequence[int] | None = None, batch_rows: int = 256, hook: str | None = None) -> torch.Tensor:
    """How much amplifying each latent raises the probability of its own top logit-lens tokens.

    For latent i: its `top_tokens` most promoted tokens by the logit lens (W_dec[i] through the
    unembedding); then, over `n_rows` held-out contexts, the mean next-token probability mass on
    those tokens with the latent steered at `strength`, minus the same mass unsteered. A latent
    whose direction really writes its tokens scores high (Arad et al. 2025's output score, as a
    probability gain); one that mostly reads its input scores near zero. With `tokens` (e.g.
    `concept_tokens(tokenizer, "animal")`), the mass on those tokens is scored instead, the same for
    every latent: how well each steers towards a concept. Returns [len(latents)].
    """
    from saekit.data import pack_rows, text_source

    latents = list(range(sae.cfg.d_sae)) if latents is None else [int(i) for i in latents]
    _check_latents(sae, latents)
    hook = hook or sae.cfg.hook_name
    device = next(model.parameters()).device
    rows = pack_rows(text_source(source).docs(tokenizer), context_size)
    ids = torch.from_numpy(np.stack([next(rows).ids for _ in range(n_rows)])).to(device)
    keep = ~torch.isin(ids, torch.tensor(sorted(tokenizer.special_id_set), device=device))
    if tokens is not None:
        if len(tokens) == 0:
            raise ValueError("output_scores: `tokens` is empty")
        top = torch.tensor([list(tokens)], device=device).expand(len(latents), -1)  # [n_latents, n_tokens]
    else:
        lens = logit_lens(model, sae, hook)[latents]
        lens[:, sorted(tokenizer.special_id_set)] = float("-inf")
        top = lens.topk(top_tokens, dim=-1).indices.to(device)  # [n_latents, top_tokens]

    def mass(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # probs [n, rows, T, V], tokens [n, m] -> mean over kept positions of the mass on the tokens: [n]
        picked = probs.gather(-1, tokens[:, None, None, :].expand(-1, *probs.shape[1:3], -1)).sum(-1)
        return (picked * keep).sum((1, 2)) / keep.sum()

    clean = model(ids).softmax(-1)
    directions = sae.W_dec.detach()[latents]
    if relative_to == "max":
        amounts = torch.tensor([_scale(sae, i, strength, "max", max_acts, ("max", "norm"), "output_scores strength")
                                for i in latents])
    elif relative_to == "norm":
        amounts = torch.full((len(latents),), float(strength))
        directions = F.normalize(directions, dim=-1)
    else:
        raise ValueError(f"output_scores: relative_to must be 'max' or 'norm', got {relative_to!r}")
    scores = torch.empty(len(latents))
    per_batch = max(1, batch_rows // n_rows)
    for start in range(0, len(latents), per_batch):
        chunk = slice(start, min(start + per_batch, len(latents)))
        n = chunk.stop - chunk.start
        vectors = (amounts[chunk, None] * directions[chunk]).to(device)  # [n, d_in]

        def add(x, vectors=vectors, n=n):
            x = x.view(n, n_rows, *x.shape[1:])
            scale = x.norm(dim=-1, keepdim=True) if relative_to == "norm" else 1.0
            return (x + scale * vectors[:, None, None, :]).flatten(0, 1)

        with patch(model, hook, add):
            steered = model(ids.repeat(n, 1)).softmax(-1).view(n, n_rows, context_size, -1)
        scores[chunk] = (mass(steered, top[chunk]) - mass(clean.expand(n, *clean.shape), top[chunk])).float().cpu()
    return scores
