"""
Feature absorption, measured on TinyWorld's categories (in the spirit of Chanin et al. 2024, "A is for Absorption").

An SAE rewarded for sparsity can learn "animal" as one latent and "cat" as another, and then find it
cheaper, on cat tokens, to let the "cat" latent write the animal direction too: one active latent
instead of two. The "animal" latent then has a hole — it fires on every animal but the cat — and
anyone reading it as "animal" is misled. TinyWorld labels every category token, so the hole can be
measured. For a parent concept P (a lexical category: animal, colour, weekday, ...), over the first
`n_tokens` of a labelled store, in raw activation space:

- **P tokens**: tokens labelled P whose text is one of P's words (" cat", "Cats"; stripped and
  lower-cased, each word is a **member**). Pieces of split words carry the label too, but the "s" of
  "cat|s" is not an animal word, so they are left out;
- **parent latent**: the latent whose firing (f > 0) matches P's labels with the best F1, as in
  `saekit.evaluate.concept_recovery`;
- **parent direction** d_P: the unit vector along mean(x | P) - mean(x | not P). A mean difference
  rather than a trained probe: nothing to fit or tune, and it points where P's tokens differ;
- **contribution** of latent j on token t: c_j(t) = f_j(t) * (W_dec[j] . d_P), what j writes along d_P;
- a P token is **absorbed** when the parent latent is silent on it while another active latent j
  (a) points along the parent, cos(W_dec[j], d_P) >= `min_cosine`, and (b) does the parent's job
  there, writing along d_P at least `min_share` of what the parent latent typically writes (the
  median of its c on the P tokens where it fires): c_j(t) >= min_share * typical. That j is an
  **absorbing latent**. The defaults: a cosine of 0.3 is over three standard deviations of that of
  random directions in 128 dimensions (1/sqrt(128) = 0.09), and half the parent's write is a latent
  doing much of its job. The write is compared with the parent's own rather than with the whole
  code's: with k = 32 latents on a 128-wide model the parent direction is spread over many latents
  on every token, so a single latent rarely carries even half of it.

Each P token is then found (the parent latent fires: **recall**), absorbed (**absorption rate**) or
just missed; the three shares sum to one. Per member, absorption shows as a word the parent latent
skips while another latent covers it. An absorbing latent that covers many members is rather a
broader or split parent (or an intermediate concept: a "bird" latent absorbing "animal" on birds);
the table lists the members each one covers, so the cases can be told apart.

Chanin et al. pick the parent latents with k-sparse probing and confirm absorption by ablation; the
single best-F1 latent and a direction test are the simplest version that needs only labels. Its
weak point is that choice: when the best-F1 latent is not the one that writes the parent direction
(its cosine is in the table), a broad latent that does is counted as absorbing everything it covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from saekit.evaluate import ConceptRecovery, _raw_batches, concept_recovery
from saekit.sae.base import SAE
from saekit.store import unpack_labels
from saekit.world import CONCEPT_INDEX, CONCEPTS, LEXICON

# the categories whose members are words of TinyWorld's lexicon (animal, colour, weekday, ...)
CATEGORIES = [c.name for c in CONCEPTS if any(c.name in names for names in LEXICON.values())]


@dataclass
class AbsorptionReport:
    """Per parent concept: its latent, recall, absorption rate, absorbing latents and members."""

    rows: list[dict]
    min_cosine: float
    min_share: float

    @property
    def mean_absorption(self) -> float:
        """Absorption rate averaged over the parents (each parent counts once, whatever its frequency)."""
        return float(np.mean([r["absorption_rate"] for r in self.rows]))

    @property
    def mean_recall(self) -> float:
        return float(np.mean([r["recall"] for r in self.rows]))

    def row(self, concept: str) -> dict:
        for r in self.rows:
            if r["concept"] == concept:
                return r
        raise KeyError(f"no parent {concept!r}; measured: {[r['concept'] for r in self.rows]}")

    def table(self, absorbers: int = 3) -> str:
        """One line per parent: its latent (and its decoder's cosine with the parent direction), recall,
        absorption rate and the top absorbing latents with the members they cover."""
        lines = [f"{'parent':<12} {'latent':>6} {'cosine':>6} {'tokens':>6} {'recall':>6} {'absorbed':>8}  "
                 "absorbing latents (tokens: members)"]
        for r in self.rows:
            top = "; ".join(f"{a['latent']} ({a['tokens']}: {', '.join(a['members'][:3])}"
                            + (", ..." if len(a["members"]) > 3 else "") + ")" for a in r["absorbers"][:absorbers])
            lines.append(f"{r['concept']:<12} {r['latent']:>6} {r['cosine']:>6.2f} {r['tokens']:>6} "
                         f"{r['recall']:>6.2f} {r['absorption_rate']:>8.2f}  {top}")
        return "\n".join(lines)


@torch.no_grad()
def parent_directions(store, parents: list[int], hook: str | None = None, n_tokens: int = 100_000,
                      batch_size: int = 8192) -> torch.Tensor:
    """Unit mean-difference directions [len(parents), d_in]: mean(x | concept) - mean(x | not concept)."""
    labels = torch.from_numpy(unpack_labels(store.label_masks()[:n_tokens])[:, parents]).double()
    inside = outside = None
    offset = 0
    for x in _raw_batches(store, hook, n_tokens, batch_size):
        y = labels[offset:offset + len(x)]
        x = x.double()
        part_in, part_all = y.T @ x, x.sum(0)
        inside = part_in if inside is None else inside + part_in
        outside = part_all - part_in if outside is None else outside + part_all - part_in
        offset += len(x)
    counts = labels[:offset].sum(0)
    if (counts == 0).any():
        missing = [CONCEPTS[p].name for p, n in zip(parents, counts) if n == 0]
        raise ValueError(f"no tokens labelled {missing} among the first {offset} tokens of the store")
    difference = inside / counts[:, None] - outside / (offset - counts)[:, None]
    return torch.nn.functional.normalize(difference, dim=1).float()


@torch.no_grad()
def absorption(sae: SAE, store, tokenizer, parents: list[str] | None = None, hook: str | None = None,
               n_tokens: int = 100_000, batch_size: int = 8192, recovery: ConceptRecovery | None = None,
               min_cosine: float = 0.3, min_share: float = 0.5) -> AbsorptionReport:
    """Recall and absorption of each parent concept's best latent (see the module docstring).

    `sae` must read raw activations (loaded, or `TrainResult.raw_sae()`); `store` must carry TinyWorld
    labels; `tokenizer` (the store's) tells which tokens are whole member words. `parents` defaults to
    every lexical category (`CATEGORIES`). Pass the `recovery` of `concept_recovery` on the same tokens
    to reuse its parent latents instead of encoding the store once more.
    """
    parents = list(parents or CATEGORIES)
    unknown = [p for p in parents if p not in CONCEPT_INDEX]
    if unknown:
        raise ValueError(f"unknown parent concepts {unknown}; expected names from saekit.world.CONCEPTS")
    if not getattr(store, "has_labels", False):
        raise ValueError("absorption needs a store with TinyWorld concept labels")
    sae = sae.eval()
    index = [CONCEPT_INDEX[p] for p in parents]
    recovery = recovery or concept_recovery(sae, store, hook, n_tokens, batch_size)
    parent_latent = torch.tensor([int(recovery.f1[:, c].argmax()) for c in index])
    directions = parent_directions(store, index, hook, n_tokens, batch_size)
    along = sae.W_dec @ directions.T  # [d_sae, parents]: what a unit of each latent writes along each direction
    cosine = along / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    eligible = cosine >= min_cosine
    eligible[parent_latent, torch.arange(len(index))] = False
    tokens = store.tokens()[:n_tokens].astype(np.int64)
    vocabulary, position = np.unique(tokens, return_inverse=True)
    words = {int(t): tokenizer.token_str(int(t)).strip().lower() for t in vocabulary}
    is_word = np.array([[p in LEXICON.get(words[int(t)], ()) for p in parents] for t in vocabulary])[position]
    selected = torch.from_numpy(unpack_labels(store.label_masks()[:n_tokens])[:, index] & is_word)
    found = {p: [] for p in range(len(index))}  # per parent and batch: token ids, parent's write, best other write
    offset = 0
    for x in _raw_batches(store, hook, n_tokens, batch_size):
        f = sae.encode(x)
        for p in range(len(index)):
            rows = torch.nonzero(selected[offset:offset + len(x), p]).flatten()
            if len(rows):
                contribution = f[rows] * along[:, p]
                best = (contribution * eligible[:, p]).max(dim=1)
                found[p].append((torch.from_numpy(tokens[offset + rows.numpy()]), contribution[:, parent_latent[p]],
                                 f[rows, parent_latent[p]] > 0, best.values, best.indices))
        offset += len(x)
    rows = []
    for p, concept in enumerate(parents):
        if not found[p]:
            raise ValueError(f"no whole-word {concept!r} tokens among the evaluated tokens")
        token_ids, parent_write, fired, best, best_latent = (torch.cat(column).numpy() for column in zip(*found[p]))
        typical = float(np.median(parent_write[fired])) if fired.any() else float("nan")
        absorbed = ~fired & (best > 0) & (best >= min_share * typical)
        rows.append(_parent_row(concept, int(parent_latent[p]), float(cosine[parent_latent[p], p]), typical,
                                np.array([words[int(t)] for t in token_ids]), fired,
                                np.where(absorbed, best_latent, -1)))
    return AbsorptionReport(rows, min_cosine, min_share)


def _parent_row(concept: str, latent: int, cosine: float, typical: float, names: np.ndarray, fired: np.ndarray,
                absorber: np.ndarray) -> dict:
    members = []
    for name in np.unique(names):
        mine = names == name
        members.append({"member": str(name), "tokens": int(mine.sum()), "recall": float(fired[mine].mean()),
                        "absorption_rate": float((absorber[mine] >= 0).mean())})
    members.sort(key=lambda m: -m["tokens"])
    absorbers = []
    for j, count in zip(*np.unique(absorber[absorber >= 0], return_counts=True)):
        covered, per_member = np.unique(names[absorber == j], return_counts=True)
        absorbers.append({"latent": int(j), "tokens": int(count),
                          "members": [str(m) for m in covered[np.argsort(-per_member, kind="stable")]]})
    absorbers.sort(key=lambda a: -a["tokens"])
    return {"concept": concept, "latent": latent, "cosine": cosine, "typical_write": typical, "tokens": len(names),
            "recall": float(fired.mean()), "absorption_rate": float((absorber >= 0).mean()), "absorbers": absorbers,
            "members": members}


def plot_absorption(reports: dict[str, AbsorptionReport], ax=None):
    """Absorption rate per parent concept, one bar per SAE (`reports`: name -> report on the same parents)."""
    import matplotlib.pyplot as plt

    names = list(reports)
    parents = [r["concept"] for r in reports[names[0]].rows]
    ax = ax or plt.subplots(figsize=(max(8, 0.5 * len(parents)), 3.5))[1]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        rates = [reports[name].row(p)["absorption_rate"] for p in parents]
        ax.bar(np.arange(len(parents)) + (i - (len(names) - 1) / 2) * width, rates, width,
               label=f"{name} (mean {reports[name].mean_absorption:.2f})")
    ax.set_xticks(np.arange(len(parents)), parents, rotation=45, ha="right")
    ax.set_ylabel("absorbed share of tokens")
    ax.legend()
    return ax
