"""
Feature statistics: what every latent of an SAE does, gathered in one pass over an activation store.

`feature_statistics(sae, store, model, tokenizer)` reads the store's first `n_tokens` activations
in order, encodes them batch by batch and keeps, per latent:

- how often it fires (density), its largest and mean activation;
- a histogram of its non-zero activations (50 bins between 0 and the max);
- its top-activating tokens, each with a window of tokens either side (activation per token);
- random samples from equal-width activation intervals between 0 and the max;
- the latents it fires with (Pearson correlation over a subsample of tokens), the latents whose
  decoder directions point the same way, and the model dimensions it tracks;
- the logit lens of its decoder direction (top and bottom tokens, a histogram over the vocabulary);
- on TinyWorld stores, the ground-truth concept its firing matches best, with precision, recall, F1.

One pass, whatever the max turns out to be: each latent's activations are counted in 2048 fine
bins between 0 and a power of two above its running max. When the max outgrows that bound, the bound
doubles and pairs of bins merge, so the counts stay exact; at the end the histogram's and the
intervals' edges are snapped to that grid (histogram bins equal in width to within 10%, intervals
to within 20%; the exact edges are reported). Interval samples are bottom-k sketches: every active
token gets a random key (a seeded generator), and for each latent and each of 64 coarse bins the 5
smallest keys are kept; the 5 smallest keys of a union of bins are a uniform sample of it. The top
tokens and the samples record their window's activations when they are offered (the next batch is
encoded first, so windows that cross a batch edge are complete): nothing is re-encoded at the end.

Windows never cross documents: the store keeps each token's document id and position, and the
special tokens it drops (BOS, chat markers) are shown as gaps (`DROPPED`), BOS as itself.

`stats[i]` is a `FeatureCard` that Jupyter renders as HTML (see `saekit.cards`); `save`/`load`
keep the statistics in a `.npz` file (no pickles), token strings included.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm  # text on stderr: notebooks stay comparable under nbval

from saekit.evaluate import _raw_batches, scores_to_f1
from saekit.hooks import resolve, run_until
from saekit.sae.base import SAE
from saekit.store import ActivationStore, unpack_labels
from saekit.world import CONCEPTS

NO_TOKEN = -1  # window slot outside the document, or outside the tokens read
DROPPED = -2  # window slot inside the document whose token the store left out (a special token)
GRID = 2048  # fine bins between 0 and each latent's power-of-two bound
SAMPLE_BINS = 64  # coarse bins (of GRID // SAMPLE_BINS fine bins) that interval samples are kept per
SORT_KEYS = {"density": "density", "max": "max_activation", "concept": "best_f1"}  # order(by) -> field


@dataclass(eq=False)
class FeatureStats:
    """Per-latent statistics of an SAE over `n_tokens` tokens of a store (arrays indexed by latent first).

    Examples (top activations and interval samples) are windows of `left + 1 + right` tokens:
    `*_tokens` hold token ids (`NO_TOKEN`, `DROPPED` where there is none), `*_values` the latent's
    activation on each, `*_index` the store index of the window's centre token (-1: no example).
    """

    n_tokens: int
    hook: str
    left: int
    right: int
    token_strings: list[str]  # by token id
    fires: np.ndarray  # [d] tokens the latent was active on
    density: np.ndarray  # [d] fires / n_tokens
    max_activation: np.ndarray  # [d] (0 if it never fired)
    mean_activation: np.ndarray  # [d] mean of its non-zero activations (nan if it never fired)
    hist_edges: np.ndarray  # [d, bins + 1] between 0 and (just above) the max
    hist_counts: np.ndarray  # [d, bins] non-zero activations per bin
    top_index: np.ndarray  # [d, n_top]
    top_tokens: np.ndarray  # [d, n_top, window]
    top_values: np.ndarray  # [d, n_top, window]
    interval_edges: np.ndarray  # [d, n_intervals + 1], lowest first
    interval_counts: np.ndarray  # [d, n_intervals] active tokens per interval
    sample_index: np.ndarray  # [d, n_intervals, per_interval]
    sample_tokens: np.ndarray  # [d, n_intervals, per_interval, window]
    sample_values: np.ndarray  # [d, n_intervals, per_interval, window]
    logit_top_ids: np.ndarray  # [d, n_logits] tokens the decoder direction promotes most, best first
    logit_top_values: np.ndarray
    logit_bottom_ids: np.ndarray  # [d, n_logits] tokens it suppresses most, most negative first
    logit_bottom_values: np.ndarray
    logit_hist_edges: np.ndarray  # [d, bins + 1] over the whole vocabulary
    logit_hist_counts: np.ndarray  # [d, bins]
    correlated_ids: np.ndarray  # [d, n_correlated] latents with the highest Pearson correlation of activations
    correlated_pearson: np.ndarray
    correlated_cosine: np.ndarray  # cosine of the same pairs' activation vectors
    decoder_cosine_ids: np.ndarray  # [d, n_correlated] latents with the most similar decoder directions
    decoder_cosine: np.ndarray
    neuron_ids: np.ndarray  # [d, 3] largest entries of the decoder row (signed)
    neuron_values: np.ndarray
    neuron_l1: np.ndarray  # |value| / L1 norm of the row
    neuron_corr_ids: np.ndarray  # [d, 3] activation dimensions best correlated with the latent
    neuron_corr_pearson: np.ndarray
    neuron_corr_cosine: np.ndarray
    correlation_tokens: int  # tokens the correlations were computed on
    concept_names: list[str] = field(default_factory=list)  # empty without ground-truth labels
    concept_f1: np.ndarray | None = None  # [d, n_concepts]
    best_concept: np.ndarray | None = None  # [d] concept index with the best F1 (-1 if it never fired)
    best_f1: np.ndarray | None = None  # [d] and the precision and recall of that match
    best_precision: np.ndarray | None = None
    best_recall: np.ndarray | None = None
    sae: nn.Module | None = field(default=None, repr=False)  # for prompts; not saved
    model: nn.Module | None = field(default=None, repr=False)
    tokenizer: object = field(default=None, repr=False)

    # ------------------------------------------------------------------ access

    @property
    def d_sae(self) -> int:
        return len(self.fires)

    @property
    def has_concepts(self) -> bool:
        return self.concept_f1 is not None

    def __len__(self) -> int:
        return self.d_sae

    def __getitem__(self, latent: int) -> FeatureCard:
        return self.card(latent)

    def card(self, latent: int) -> FeatureCard:
        """The latent's feature card (rendered as HTML in Jupyter)."""
        return FeatureCard(self, self._check_latent(latent))

    def _check_latent(self, latent) -> int:
        if isinstance(latent, bool) or not isinstance(latent, (int, np.integer)):
            raise TypeError(f"a latent is an integer index, got {type(latent).__name__}")
        if not 0 <= latent < self.d_sae:
            raise IndexError(f"latent {latent} out of range: this SAE has {self.d_sae} latents (0..{self.d_sae - 1})")
        return int(latent)

    def token_str(self, token_id: int) -> str:
        """A window token as text: the vocabulary entry, or a marker for `DROPPED` slots."""
        if token_id == DROPPED:
            return "<special>"
        if token_id == NO_TOKEN:
            return ""
        return self.token_strings[token_id] if 0 <= token_id < len(self.token_strings) else f"<{token_id}>"

    def examples(self, latent: int) -> list[dict]:
        """The latent's top activations, then its interval samples (highest interval first), as plain dicts.

        Each: `kind` ("top" or "interval"), `interval` (lower, upper) for samples, `index` (store
        index of the centre token), `tokens` (strings), `values`, `centre` (index of the centre
        token in those lists, after slots without a token are trimmed).
        """
        latent = self._check_latent(latent)
        out = []
        for k in range(self.top_index.shape[1]):
            if self.top_index[latent, k] >= 0:
                out.append({"kind": "top", **self._window(self.top_index[latent, k], self.top_tokens[latent, k],
                                                          self.top_values[latent, k])})
        for q in reversed(range(self.sample_index.shape[1])):
            bounds = (float(self.interval_edges[latent, q]), float(self.interval_edges[latent, q + 1]))
            for s in range(self.sample_index.shape[2]):
                if self.sample_index[latent, q, s] >= 0:
                    out.append({"kind": "interval", "interval": bounds,
                                **self._window(self.sample_index[latent, q, s], self.sample_tokens[latent, q, s],
                                               self.sample_values[latent, q, s])})
        return out

    def _window(self, index, tokens, values) -> dict:
        present = np.flatnonzero(tokens != NO_TOKEN)
        first, last = present[0], present[-1]
        return {"index": int(index), "tokens": [self.token_str(int(t)) for t in tokens[first:last + 1]],
                "token_ids": tokens[first:last + 1].tolist(), "values": values[first:last + 1].tolist(),
                "centre": int(self.left - first)}

    def order(self, by: str = "density", descending: bool = True, alive_only: bool = True) -> np.ndarray:
        """Latent indices sorted by `density`, `max` (activation) or `concept` (best F1); ties by index."""
        if by not in SORT_KEYS:
            raise ValueError(f"sort by one of {list(SORT_KEYS)}, got {by!r}")
        if by == "concept" and not self.has_concepts:
            raise ValueError("these statistics have no concept matches (the store has no TinyWorld labels)")
        key = np.nan_to_num(getattr(self, SORT_KEYS[by]).astype(np.float64), nan=-1.0)
        order = np.lexsort((np.arange(self.d_sae), -key if descending else key))
        return order[self.fires[order] > 0] if alive_only else order

    def find_concept(self, name: str, k: int = 10) -> list[tuple[int, float]]:
        """The k latents whose firing best matches a TinyWorld concept: (latent, F1), best first."""
        if not self.has_concepts:
            raise ValueError("these statistics have no concept matches (the store has no TinyWorld labels)")
        if name not in self.concept_names:
            raise KeyError(f"unknown concept {name!r}; concepts are {', '.join(self.concept_names)}")
        f1 = self.concept_f1[:, self.concept_names.index(name)]
        best = np.lexsort((np.arange(self.d_sae), -f1))[:k]
        return [(int(i), float(f1[i])) for i in best if f1[i] > 0]

    def find_token(self, token: str | int, k: int = 10) -> list[tuple[int, int]]:
        """Latents whose top activations peak on a token: (latent, how many of its top examples do), most first.

        `token` is a token id or text; text matches token strings ignoring case and surrounding spaces.
        """
        if isinstance(token, str):
            wanted = token.strip().lower()
            ids = [i for i, s in enumerate(self.token_strings) if s.strip().lower() == wanted]
            if not ids:
                return []
        else:
            ids = [int(token)]
        centres = self.top_tokens[:, :, self.left]
        hits = np.isin(centres, ids).sum(axis=1)
        best = np.lexsort((np.arange(self.d_sae), -hits))[:k]
        return [(int(i), int(hits[i])) for i in best if hits[i] > 0]

    @torch.no_grad()
    def prompt_features(self, text: str, k: int = 5) -> list[dict]:
        """Per token of `text` (after a BOS): its k most active latents as (latent, activation), strongest first.

        Special tokens get no latents: the SAE never saw them in training.
        """
        if self.sae is None or self.model is None or self.tokenizer is None:
            raise ValueError("prompt_features needs the SAE, model and tokenizer: use statistics from "
                             "feature_statistics(), or set .sae, .model and .tokenizer after load()")
        ids = self.tokenizer.encode(text, prepend_bos=True)
        device = next(self.model.parameters()).device
        acts = run_until(self.model, torch.tensor([ids], device=device), [self.hook])[self.hook][0]
        f = self.sae.eval().encode(acts.float().to(next(self.sae.parameters()).device)).cpu()
        values, latents = f.topk(min(k, self.d_sae), dim=1)
        out = []
        for t, token_id in enumerate(ids):
            special = token_id in self.tokenizer.special_id_set
            out.append({"token": self.token_strings[token_id], "token_id": token_id, "features": [] if special else
                        [(int(i), float(v)) for i, v in zip(latents[t], values[t]) if v > 0]})
        return out

    # ------------------------------------------------------------------ saving

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics to one `.npz` file (atomically); the SAE, model and tokenizer are not saved."""
        path = Path(path)
        arrays, meta = {}, {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("sae", "model", "tokenizer"):
                continue
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
            elif value is not None:  # numbers and lists of strings (JSON keeps every character, NUL too)
                meta[f.name] = value
        arrays["meta"] = np.array(json.dumps(meta))
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Statistics written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a saved FeatureStats file: {exc}") from exc
        names = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in arrays and f.name not in meta
                   and f.default is MISSING and f.default_factory is MISSING]
        unknown = sorted((set(arrays) | set(meta)) - names)
        if missing or unknown:
            raise ValueError(f"{path} is not a FeatureStats file of this saekit: it lacks {missing}, and has "
                             f"unknown entries {unknown}")
        return cls(**arrays, **meta)

    def __repr__(self) -> str:
        alive = int((self.fires > 0).sum())
        return (f"FeatureStats({self.d_sae} latents at {self.hook}, {self.n_tokens:,} tokens, {alive} fired, "
                f"concepts={'yes' if self.has_concepts else 'no'})")


class FeatureCard:
    """One latent's statistics, shown as an HTML card in Jupyter (`saekit.cards.card_html`)."""

    def __init__(self, stats: FeatureStats, latent: int):
        self.stats, self.latent = stats, latent

    def _repr_html_(self) -> str:
        from saekit.cards import card_html

        return card_html(self.stats, self.latent, standalone=True)

    def __repr__(self) -> str:
        s, i = self.stats, self.latent
        concept = ""
        if s.has_concepts and s.best_concept[i] >= 0:
            concept = f", best concept {s.concept_names[s.best_concept[i]]} (F1 {s.best_f1[i]:.2f})"
        top = ", ".join(repr(s.token_strings[t]) for t in s.logit_top_ids[i][:5])
        return (f"<latent {i}: density {s.density[i]:.3%}, max {s.max_activation[i]:.3g}{concept}; "
                f"logit lens promotes {top}>")


# --------------------------------------------------------------------------- the pass


class _Grid:
    """Per latent: a power-of-two bound above its running max, and counts in GRID equal bins below it."""

    UNSEEN = -(2**30)

    def __init__(self, d_sae: int):
        self.exponent = torch.full((d_sae,), self.UNSEEN, dtype=torch.int64)
        self.counts = torch.zeros(d_sae, GRID, dtype=torch.int64)

    def raise_bounds(self, batch_max: torch.Tensor) -> torch.Tensor:
        """Grow bounds to cover `batch_max`, merging bins (bin b of a bound 2**m times larger sums bins
        b*2**m .. (b+1)*2**m - 1 of the old one); returns the latents whose earlier bins merged."""
        new = torch.where(batch_max > 0, torch.frexp(batch_max).exponent.long(), self.UNSEEN)  # max < 2**new
        rising = new > self.exponent
        merged = torch.nonzero(rising & (self.exponent != self.UNSEEN)).flatten()
        shifts = (new - self.exponent)[merged].clamp(max=GRID.bit_length() - 1)
        for shift in shifts.unique().tolist():
            pick = merged[shifts == shift]
            factor = 1 << shift
            grouped = self.counts[pick].view(len(pick), GRID // factor, factor).sum(-1)
            self.counts[pick] = 0
            self.counts[pick, :GRID // factor] = grouped
        self.exponent = torch.where(rising, new, self.exponent)
        return merged

    def bins(self, latents: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Fine bin of each value: exact, since the bound is a power of two."""
        return (torch.ldexp(values, -self.exponent[latents].to(torch.int32)) * GRID).long().clamp_(0, GRID - 1)


class _Keeper:
    """For each group, the `size` entries with the smallest keys so far, with their payloads.

    Top activations: a group per latent, key = -activation. Interval samples: a group per latent
    and coarse bin, key = random. Slots are unsorted; `worst` (the largest kept key, inf while a
    slot is free) is the bar a newcomer must beat. A newcomer that gets in takes an evicted slot,
    so only newcomers' payloads are written. Equal keys: the earlier token wins.
    """

    def __init__(self, n_groups: int, size: int, width: int):
        self.size = size
        self.key = torch.full((n_groups, size), float("inf"))
        self.index = torch.full((n_groups, size), -1, dtype=torch.int64)
        self.value = torch.zeros(n_groups, size)
        self.window = torch.zeros(n_groups, size, width)
        self.worst = torch.full((n_groups,), float("inf"))

    def offer(self, groups: torch.Tensor, keys: torch.Tensor, index: torch.Tensor, payload) -> None:
        """Offer entries (group, key, store index); `payload(positions)` gives (value, window) of those that get in."""
        # (index_select rather than [] indexing: many times faster for long index lists on CPU)
        entries = torch.nonzero(keys < self.worst.index_select(0, groups)).flatten()
        if len(entries) == 0:
            return
        groups, keys, index = (t.index_select(0, entries) for t in (groups, keys, index))
        order = torch.argsort(keys, stable=True)
        order = order[torch.argsort(groups[order], stable=True)]  # by group, then key, then arrival
        uniq, counts = torch.unique_consecutive(groups[order], return_counts=True)
        row = torch.repeat_interleave(torch.arange(len(uniq)), counts)
        rank = torch.arange(len(order)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        best = rank < self.size  # at most `size` newcomers per group can get in
        order, row, rank = order[best], row[best], rank[best]
        m, size = len(uniq), self.size
        fresh = torch.full((m, size), float("inf"))
        fresh[row, rank] = keys[order]
        source = torch.full((m, size), -1, dtype=torch.int64)
        source[row, rank] = order
        fresh_index = torch.full((m, size), -1, dtype=torch.int64)
        fresh_index[row, rank] = index[order]
        merged = torch.cat([self.key.index_select(0, uniq), fresh], dim=1)
        by_index = torch.argsort(torch.cat([self.index.index_select(0, uniq), fresh_index], dim=1), dim=1, stable=True)
        ranked = by_index.gather(1, torch.argsort(merged.gather(1, by_index), dim=1, stable=True))  # key, then index
        kept = torch.zeros(m, 2 * size, dtype=torch.bool).scatter_(1, ranked[:, :size], True)
        evicted, entering = ~kept[:, :size], kept[:, size:] & torch.isfinite(fresh)
        # pair each row's evicted slots with its entering newcomers, both in column order
        slots = torch.argsort((~evicted).to(torch.int8), dim=1, stable=True)
        newcomers = torch.argsort((~entering).to(torch.int8), dim=1, stable=True)
        r, t = torch.nonzero(torch.arange(size) < entering.sum(1, keepdim=True), as_tuple=True)
        where = uniq[r] * size + slots[r, t]
        chosen = source[r, newcomers[r, t]]
        value, window = payload(entries[chosen])
        for table, new in ((self.key, keys[chosen]), (self.index, index[chosen]), (self.value, value),
                           (self.window, window)):
            table.view(-1, *table.shape[2:]).index_copy_(0, where, new)
        self.worst.index_copy_(0, uniq, self.key.index_select(0, uniq).max(1).values)

    def take(self, groups: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Remove and return every entry of `groups`: (group, key, index, value, window)."""
        keys = self.key[groups]
        present = torch.isfinite(keys)
        out = (groups[:, None].expand_as(keys)[present], keys[present], self.index[groups][present],
               self.value[groups][present],
               self.window[groups][present])
        self.key[groups], self.index[groups], self.worst[groups] = float("inf"), -1, float("inf")
        return out


class _Pass:
    """Everything accumulated over the tokens, one batch at a time."""

    def __init__(self, d_sae: int, d_in: int, n_tokens: int, n_top: int, per_interval: int, left: int, right: int,
                 correlation_tokens: int, masks: torch.Tensor | None, positives: torch.Tensor | None, seed: int):
        self.d, self.left, self.right = d_sae, left, right
        self.width = left + 1 + right
        self.fires = torch.zeros(d_sae, dtype=torch.int64)
        self.sums = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae)
        self.grid = _Grid(d_sae)
        self.top = _Keeper(d_sae, n_top, self.width)
        self.samples = _Keeper(d_sae * SAMPLE_BINS, per_interval, self.width)
        self.generator = torch.Generator().manual_seed(seed)
        self.stride = max(1, n_tokens // max(1, correlation_tokens))
        self.corr_n = 0  # subsampled tokens: their codes kept sparse (sample, latent, value), their activations dense
        self.corr_codes: list[tuple[torch.Tensor, ...]] = []
        self.corr_x: list[torch.Tensor] = []
        self.masks, self.positives = masks, positives  # concept bit masks per token, positives per concept
        self.tp = None if masks is None else torch.zeros(d_sae, len(CONCEPTS), dtype=torch.float64)
        self.previous = torch.zeros(0, d_sae)  # the last `left` rows of the code before this batch

    def process(self, x: torch.Tensor, f: torch.Tensor, start: int, next_rows: torch.Tensor) -> None:
        """Batch f (codes of tokens start.. of x), with the code rows just after it for windows."""
        d = self.d
        flat = torch.nonzero(f.view(-1) > 0).flatten()
        rows, cols = flat.div(d, rounding_mode="floor"), flat.remainder(d)
        values = f.view(-1).index_select(0, flat)
        self.fires += torch.bincount(cols, minlength=d)
        self.sums.index_add_(0, cols, values.double())
        batch_max = torch.zeros(d).scatter_reduce_(0, cols, values, "amax")
        self.max = torch.maximum(self.max, batch_max)

        merged = self.grid.raise_bounds(batch_max)
        if len(merged):  # their coarse bins merged too: regroup their samples (bottom-k of a union is exact)
            groups, keys, index, value, window = self.samples.take(
                (merged[:, None] * SAMPLE_BINS + torch.arange(SAMPLE_BINS)).flatten())
            latents = groups.div(SAMPLE_BINS, rounding_mode="floor")
            self.samples.offer(latents * SAMPLE_BINS + self.grid.bins(latents, value) // (GRID // SAMPLE_BINS), keys,
                               index, lambda positions: (value[positions], window[positions]))
        fine = self.grid.bins(cols, values)
        self.grid.counts.view(-1).index_add_(0, cols * GRID + fine, torch.ones_like(fine))

        def payload(positions: torch.Tensor):
            return values[positions], self.windows(f, next_rows, rows[positions], cols[positions])

        index = rows + start
        self.top.offer(cols, -values, index, payload)  # top activations: the smallest negated values
        groups = cols * SAMPLE_BINS + fine // (GRID // SAMPLE_BINS)
        self.samples.offer(groups, torch.rand(len(values), generator=self.generator), index, payload)

        if self.tp is not None:
            uniq, inverse = torch.unique(self.masks[start:start + len(f)], return_inverse=True)
            counts = torch.bincount(cols * len(uniq) + inverse.index_select(0, rows), minlength=d * len(uniq))
            counts = counts.view(d, len(uniq))
            bits = (uniq[:, None] >> torch.arange(len(CONCEPTS))) & 1
            self.tp += (counts.float() @ bits.float()).double()  # exact: counts below 2**24
        sampled = (torch.arange(start, start + len(f)) % self.stride) == 0
        if sampled.any():
            number = torch.cumsum(sampled, 0) - 1 + self.corr_n  # each sampled row's place in the subsample
            keep = torch.nonzero(sampled.index_select(0, rows)).flatten()
            self.corr_codes.append((number.index_select(0, rows.index_select(0, keep)), cols.index_select(0, keep),
                                    values.index_select(0, keep)))
            self.corr_x.append(x[sampled].float())
            self.corr_n += int(sampled.sum())
        if self.left:
            self.previous = torch.cat([self.previous, f[-self.left:]])[-self.left:].clone()

    def windows(self, f: torch.Tensor, next_rows: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
        """Activations of latent cols[i] on rows[i] - left .. rows[i] + right (0 beyond the tokens read)."""
        offsets = torch.arange(-self.left, self.right + 1)
        interior = (rows >= self.left) & (rows < len(f) - self.right)
        if bool(interior.all()):  # the usual case: one gather from this batch's code
            where = (rows * self.d + cols)[:, None] + offsets * self.d
            return f.view(-1).index_select(0, where.view(-1)).view(where.shape)
        r = rows[:, None] + offsets
        c = cols[:, None].expand_as(r)
        out = torch.zeros(r.shape)
        for part, first in ((self.previous, -len(self.previous)), (f, 0), (next_rows, len(f))):  # rows first..
            if len(part):
                inside = (r >= first) & (r < first + len(part))
                where = ((r - first).clamp(0, len(part) - 1) * self.d + c).view(-1)
                out = torch.where(inside, part.reshape(-1).index_select(0, where).view(r.shape), out)
        return out


# --------------------------------------------------------------------------- the public function


@torch.no_grad()
def feature_statistics(sae: SAE, store: ActivationStore, model: nn.Module, tokenizer, n_tokens: int = 1_000_000,
                       hook: str | None = None, batch_size: int = 8192, n_top: int = 20, n_intervals: int = 5,
                       per_interval: int = 5, context: tuple[int, int] = (12, 4), bins: int = 50, n_logits: int = 10,
                       n_correlated: int = 5, correlation_tokens: int = 8192, seed: int = 0,
                       progress: bool = False) -> FeatureStats:
    """Statistics of every latent of a raw-space `sae` over the first `n_tokens` tokens of `store` (all, if fewer).

    `context` is the number of tokens shown (left, right) of each example's centre token. `model`
    gives the logit lens (its unembedding) and, with `tokenizer`, the token strings and prompts.
    Correlations use every k-th token (about `correlation_tokens` of them). Same seed, same numbers.
    """
    if not isinstance(store, ActivationStore):
        raise TypeError(f"feature statistics need an ActivationStore (activations with their token ids, documents "
                        f"and positions), got {type(store).__name__}")
    hook = _store_hook(sae, store, hook)
    d_in, d_sae = sae.W_dec.shape[1], sae.W_dec.shape[0]
    if store.d_in(hook) != d_in:
        raise ValueError(f"the SAE reads {d_in}-wide activations, but the store's {hook} is {store.d_in(hook)} wide")
    left, right = context
    for name, value in (("n_tokens", n_tokens), ("batch_size", batch_size), ("n_top", n_top),
                        ("n_intervals", n_intervals), ("per_interval", per_interval), ("bins", bins),
                        ("n_logits", n_logits), ("n_correlated", n_correlated)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if left < 0 or right < 0:
        raise ValueError(f"context must be two non-negative numbers of tokens (left, right), got {context}")
    if n_intervals > SAMPLE_BINS // 4 or bins > GRID // 4:
        raise ValueError(f"at most {SAMPLE_BINS // 4} intervals and {GRID // 4} histogram bins, "
                         f"got {n_intervals} and {bins}")
    n = min(n_tokens, len(store))
    if n == 0:
        raise ValueError("the store holds no tokens")
    sae = sae.eval()
    device = next(sae.parameters()).device
    masks = positives = None
    if getattr(store, "has_labels", False):
        stored = np.ascontiguousarray(store.label_masks()[:n])
        positives = torch.from_numpy(unpack_labels(stored).sum(0)).double()
        masks = torch.from_numpy(stored.view(np.int64))  # fewer than 64 concepts: no sign bit

    state = _Pass(d_sae, d_in, n, n_top, per_interval, left, right, correlation_tokens, masks, positives, seed)
    queue, start = [], 0  # encoded batches waiting for `right` rows after them (their windows' right side)
    bar = tqdm(total=n, desc="feature statistics", unit="tok", disable=not progress)
    for x in _raw_batches(store, hook, n, batch_size):
        queue.append((x, sae.encode(x.to(device)).float().cpu(), start))
        start += len(x)
        while len(queue) > 1 and sum(len(f) for _, f, _ in queue[1:]) >= right:
            _flush(state, queue, right, bar)
    while queue:
        _flush(state, queue, right, bar)
    bar.close()
    return _finish(state, sae, store, model, tokenizer, hook, n, n_intervals, bins, n_logits, n_correlated)


def _flush(state: _Pass, queue: list, right: int, bar) -> None:
    """Process the first queued batch. The bookkeeping runs on one thread (the encoder on the caller's):
    its operations are small and memory-bound, and on a 2-core machine that other programs keep busy,
    each parallel operation waits for a descheduled thread (measured: 2-2.6x slower on two threads)."""
    x, f, start = queue.pop(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state.process(x, f, start, next_rows=torch.cat([g[:right] for _, g, _ in queue] + [f[:0]])[:right])
    finally:
        torch.set_num_threads(threads)
    bar.update(len(f))


def _store_hook(sae, store, hook: str | None) -> str:
    hooks = list(store.hooks)
    if hook is None:
        name = getattr(getattr(sae, "cfg", None), "hook_name", "")
        hook = name if name in hooks else (hooks[0] if len(hooks) == 1 else None)
    if hook not in hooks:
        raise ValueError(f"the store holds {hooks}; pass hook= to choose (the SAE's hook is "
                         f"{getattr(getattr(sae, 'cfg', None), 'hook_name', '') or 'not recorded'})")
    return hook


def _finish(state: _Pass, sae, store, model, tokenizer, hook, n, n_intervals, bins, n_logits, n_correlated):
    fires = state.fires.numpy()
    max_act = state.max.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (state.sums / state.fires).numpy()
    counts = state.grid.counts.numpy()
    fine_width = np.ldexp(1.0, state.grid.exponent.clamp(min=-1000).numpy()) / GRID  # value width of a fine bin
    cumulative = np.concatenate([np.zeros((len(fires), 1), dtype=np.int64), counts.cumsum(1)], axis=1)

    def snapped(parts: int, unit: int) -> np.ndarray:
        """[d, parts + 1] fine-bin edges: multiples of `unit` fine bins nearest to equal parts of [0, max]."""
        top = np.ceil(max_act / (fine_width * unit)).astype(np.int64)
        top = np.where(fires > 0, top, parts)
        edges = np.rint(top[:, None] * np.arange(parts + 1) / parts).astype(np.int64)
        return np.clip(edges, 0, GRID // unit) * unit

    hist_fine = snapped(bins, 1)
    hist_counts = np.diff(np.take_along_axis(cumulative, hist_fine, axis=1), axis=1)
    interval_fine = snapped(n_intervals, GRID // SAMPLE_BINS)
    interval_counts = np.diff(np.take_along_axis(cumulative, interval_fine, axis=1), axis=1)
    alive = (fires > 0)[:, None]
    hist_edges = np.where(alive, hist_fine * fine_width[:, None], 0).astype(np.float32)
    interval_edges = np.where(alive, interval_fine * fine_width[:, None], 0).astype(np.float32)

    sample_index, sample_windows = _interval_samples(state, interval_fine // (GRID // SAMPLE_BINS), n_intervals)
    meta = (store.tokens()[:n], store.documents()[:n], store.positions()[:n])
    bos = getattr(tokenizer, "bos_id", NO_TOKEN)
    top = state.top  # slots are unsorted: highest activation first, ties to the earlier token
    index = torch.where(top.index < 0, torch.iinfo(torch.int64).max, top.index)
    order = torch.argsort(index, dim=1, stable=True)
    order = order.gather(1, torch.argsort(top.key.gather(1, order), dim=1, stable=True))
    top_index = top.index.gather(1, order).numpy()
    top_windows = top.window[torch.arange(len(order))[:, None], order].numpy()
    top_tokens, top_values = _place_windows(top_index, top_windows, meta, state.left, bos)
    sample_tokens, sample_values = _place_windows(sample_index, sample_windows, meta, state.left, bos)

    lens = _logit_lens(sae, model, hook, n_logits, bins)
    corr = _correlations(state, sae, n_correlated)
    concepts = _concepts(state) if state.tp is not None else {}
    return FeatureStats(
        n_tokens=n, hook=hook, left=state.left, right=state.right,
        token_strings=[tokenizer.token_str(i) for i in range(tokenizer.vocab_size)],
        fires=fires, density=fires / n, max_activation=max_act, mean_activation=mean,
        hist_edges=hist_edges, hist_counts=hist_counts, top_index=top_index,
        top_tokens=top_tokens, top_values=top_values, interval_edges=interval_edges,
        interval_counts=interval_counts, sample_index=sample_index, sample_tokens=sample_tokens,
        sample_values=sample_values, **lens, **corr, correlation_tokens=state.corr_n, **concepts,
        sae=sae, model=model, tokenizer=tokenizer)


def _interval_samples(state: _Pass, edges: np.ndarray, n_intervals: int) -> tuple[np.ndarray, np.ndarray]:
    """Per latent and interval (coarse-bin edges [d, n_intervals + 1]), the kept samples with the smallest keys.

    The bottom-k sketch of a union of bins is the bottom k of their sketches together: a uniform
    sample without replacement of the interval's active tokens.
    """
    d, size = state.d, state.samples.key.shape[1]
    keys = state.samples.key.view(d, SAMPLE_BINS * size).numpy()
    coarse = np.repeat(np.arange(SAMPLE_BINS), size)
    interval = (coarse[None, :, None] >= edges[:, None, 1:]).sum(2)  # [d, slots]; n_intervals = above the last
    present = np.isfinite(keys) & (interval < n_intervals)
    order = np.lexsort((np.where(present, keys, 2.0), ~present, interval), axis=1)  # by interval, then key
    interval = np.take_along_axis(np.where(present, interval, n_intervals), order, axis=1)
    first = np.stack([np.argmax(interval == q, axis=1) for q in range(n_intervals)], axis=1)  # [d, n_intervals]
    position = np.minimum(first[:, :, None] + np.arange(size), SAMPLE_BINS * size - 1)  # [d, n_intervals, size]
    position_flat = position.reshape(d, -1)
    ok = np.take_along_axis(interval, position_flat, axis=1).reshape(position.shape) == np.arange(n_intervals)[:, None]
    source = np.take_along_axis(order, position_flat, axis=1)
    index = np.take_along_axis(state.samples.index.view(d, -1).numpy(), source, axis=1).reshape(position.shape)
    windows = state.samples.window.view(d, SAMPLE_BINS * size, -1).numpy()[np.arange(d)[:, None], source]
    windows = windows.reshape(*position.shape, -1)
    return np.where(ok, index, -1), np.where(ok[..., None], windows, 0).astype(np.float32)


def _place_windows(index: np.ndarray, windows: np.ndarray, meta, left: int, bos: int) -> tuple[np.ndarray, ...]:
    """Token ids and activations of each example's window, placed by position in its document.

    `windows` hold activations by store offset (-left..right); tokens of other documents are dropped,
    and positions inside the document that the store left out become `DROPPED` (BOS at position 0).
    """
    tokens, docs, positions = meta
    shape, width = index.shape, windows.shape[-1]
    index, windows = index.reshape(-1), windows.reshape(-1, width)
    offsets = np.arange(width) - left
    where = index[:, None] + offsets
    valid = (index[:, None] >= 0) & (where >= 0) & (where < len(tokens))
    safe = np.clip(where, 0, len(tokens) - 1)
    centre = np.clip(index, 0, len(tokens) - 1)
    shift = positions[safe].astype(np.int64) - positions[centre][:, None]
    valid &= (docs[safe] == docs[centre][:, None]) & (np.sign(shift) == np.sign(offsets)) & (
        np.abs(shift) >= np.abs(offsets)) & (shift >= -left) & (shift < width - left)
    out_tokens = np.full(where.shape, NO_TOKEN, dtype=np.int32)
    out_values = np.zeros(where.shape, dtype=np.float32)
    rows, cols = np.nonzero(valid)
    slots = shift[rows, cols] + left
    out_tokens[rows, slots] = tokens[safe[rows, cols]]
    out_values[rows, slots] = windows[rows, cols]
    slot_position = positions[centre][:, None].astype(np.int64) + offsets
    filled = out_tokens != NO_TOKEN
    last = np.where(filled.any(1), width - 1 - np.argmax(filled[:, ::-1], axis=1), -1)
    gap = ~filled & (slot_position >= 0) & (np.arange(width) < last[:, None]) & (index[:, None] >= 0)
    out_tokens[gap] = DROPPED
    out_tokens[gap & (slot_position == 0)] = bos
    return out_tokens.reshape(*shape, width), out_values.reshape(*shape, width)


def _logit_lens(sae, model, hook: str, n_logits: int, bins: int, chunk: int = 256) -> dict:
    """Each decoder direction, carried to the residual stream, through the unembedding."""
    point, module = resolve(model, hook)
    directions = sae.W_dec.detach().float().cpu()
    if point.side == "input" and isinstance(module, nn.Linear):  # e.g. mlp.hook_post: through c_proj
        directions = directions @ module.weight.detach().float().cpu().T
    head = getattr(model, "lm_head", None)
    if head is None:
        raise ValueError(f"the logit lens needs the model's unembedding (model.lm_head); {type(model).__name__} "
                         "has none")
    vocab = getattr(getattr(model, "config", None), "vocab_size", head.weight.shape[0])
    unembed = head.weight.detach().float().cpu()[:vocab]
    if unembed.shape[1] != directions.shape[1]:
        raise ValueError(f"decoder directions at {hook} are {directions.shape[1]} wide, the unembedding reads "
                         f"{unembed.shape[1]}: the logit lens needs a residual-stream hook point")
    k = min(n_logits, vocab)
    out = {name: [] for name in ("logit_top_ids", "logit_top_values", "logit_bottom_ids", "logit_bottom_values",
                                 "logit_hist_edges", "logit_hist_counts")}
    for start in range(0, len(directions), chunk):
        logits = directions[start:start + chunk] @ unembed.T
        top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        low, high = logits.min(1).values, logits.max(1).values
        span = (high - low).clamp_min(1e-12)
        which = ((logits - low[:, None]) / span[:, None] * bins).long().clamp_(0, bins - 1)
        m = len(logits)
        counts = torch.bincount((torch.arange(m)[:, None] * bins + which).flatten(), minlength=m * bins)
        out["logit_top_ids"].append(top.indices)
        out["logit_top_values"].append(top.values)
        out["logit_bottom_ids"].append(bottom.indices)
        out["logit_bottom_values"].append(bottom.values)
        out["logit_hist_edges"].append(low[:, None] + span[:, None] * torch.arange(bins + 1) / bins)
        out["logit_hist_counts"].append(counts.view(m, bins))
    return {name: torch.cat(parts).numpy() for name, parts in out.items()}


def _correlations(state: _Pass, sae, n_correlated: int, chunk: int = 1024) -> dict:
    """Correlated latents (activations over the subsample), similar decoder directions, aligned neurons.

    Latent-by-latent matrices are computed a block of columns at a time, so memory stays
    O(d_sae x chunk) for large SAEs.
    """
    d, n = state.d, max(1, state.corr_n)
    if state.corr_codes:
        samples, latents, values = (torch.cat(parts) for parts in zip(*state.corr_codes))
    else:
        samples = latents = torch.zeros(0, dtype=torch.int64)
        values = torch.zeros(0)
    values = values.double()
    x = torch.cat(state.corr_x).double() if state.corr_x else torch.zeros(1, sae.W_dec.shape[1], dtype=torch.float64)
    codes_t = torch.sparse_coo_tensor(torch.stack([latents, samples]), values, (d, n),
                                      check_invariants=True).coalesce()  # [d_sae, tokens]
    mean_f = torch.zeros(d, dtype=torch.float64).index_add_(0, latents, values) / n
    square_f = torch.zeros(d, dtype=torch.float64).index_add_(0, latents, values**2)  # sum of f^2 per latent
    std_f = (square_f / n - mean_f**2).clamp_min(0).sqrt()
    k = min(n_correlated, max(1, d - 1))

    def products(lo: int, hi: int) -> torch.Tensor:
        """sum over the subsample of f_i f_j, for every latent i and the latents j in lo..hi-1: [d, hi - lo]."""
        pick = torch.nonzero((latents >= lo) & (latents < hi)).flatten()
        block = torch.zeros(n, hi - lo, dtype=torch.float64)
        block[samples[pick], latents[pick] - lo] = values[pick]
        return torch.sparse.mm(codes_t, block)

    def pearson_and_cosine(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        product = products(lo, hi)
        cov = product / n - mean_f[:, None] * mean_f[None, lo:hi]
        return cov / (std_f[:, None] * std_f[None, lo:hi]), product / (square_f[:, None] * square_f[None, lo:hi]).sqrt()

    ids, best, cosine = _partners(pearson_and_cosine, d, k, chunk)
    found = best > -2
    out = {"correlated_ids": torch.where(found, ids, -1).numpy(),
           "correlated_pearson": torch.where(found, best, float("nan")).float().numpy(),
           "correlated_cosine": torch.where(found, torch.nan_to_num(cosine), float("nan")).float().numpy()}

    directions = torch.nn.functional.normalize(sae.W_dec.detach().float().cpu(), dim=1)
    ids, best, _ = _partners(lambda lo, hi: (directions @ directions[lo:hi].T, directions[:, :0]), d, k, chunk)
    out["decoder_cosine_ids"], out["decoder_cosine"] = ids.numpy(), best.numpy()

    rows = sae.W_dec.detach().float().cpu()
    k_neurons = min(3, rows.shape[1])
    aligned = rows.topk(k_neurons, dim=1)
    out["neuron_ids"], out["neuron_values"] = aligned.indices.numpy(), aligned.values.numpy()
    out["neuron_l1"] = (aligned.values.abs() / rows.abs().sum(1, keepdim=True).clamp_min(1e-12)).numpy()
    fx = torch.sparse.mm(codes_t, x)  # [d_sae, d_in]: sum of f_i x_k
    mean_x, square_x = x.mean(0), x.pow(2).sum(0)
    std_x = (square_x / n - mean_x**2).clamp_min(0).sqrt()
    pearson_x = (fx / n - mean_f[:, None] * mean_x[None, :]) / (std_f[:, None] * std_x[None, :])
    best_x = torch.nan_to_num(pearson_x, nan=-2.0, posinf=-2.0, neginf=-2.0).topk(k_neurons, dim=1)
    cosine_x = (fx / (square_f[:, None] * square_x[None, :]).sqrt()).gather(1, best_x.indices)
    found = best_x.values > -2
    out["neuron_corr_ids"] = torch.where(found, best_x.indices, -1).numpy()
    out["neuron_corr_pearson"] = torch.where(found, best_x.values, float("nan")).float().numpy()
    out["neuron_corr_cosine"] = torch.where(found, torch.nan_to_num(cosine_x), float("nan")).float().numpy()
    return out


def _partners(blocks, d: int, k: int, chunk: int) -> tuple[torch.Tensor, ...]:
    """For each latent j, the k other latents i with the highest score (-2 where undefined), and a second
    quantity for the same pairs. `blocks(lo, hi)` gives both for latents lo..hi-1 as columns: [d, hi - lo]."""
    ids = torch.zeros(d, k, dtype=torch.int64)
    best, other = torch.zeros(d, k, dtype=torch.float64), torch.zeros(d, k, dtype=torch.float64)
    for lo in range(0, d, chunk):
        hi = min(lo + chunk, d)
        scores, second = blocks(lo, hi)
        scores = torch.nan_to_num(scores.double(), nan=-2.0, posinf=-2.0, neginf=-2.0)
        scores[torch.arange(lo, hi), torch.arange(hi - lo)] = -2.0  # never its own partner
        top = scores.topk(k, dim=0)
        ids[lo:hi], best[lo:hi] = top.indices.T, top.values.T
        if second.numel():
            other[lo:hi] = second.double().gather(0, top.indices).T
    return ids, best, other


def _concepts(state: _Pass) -> dict:
    precision, recall, f1 = scores_to_f1(state.tp, state.fires.double(), state.positives)
    best = f1.argmax(1)
    fired = state.fires > 0
    pick = best[:, None]
    return {"concept_names": [c.name for c in CONCEPTS], "concept_f1": f1.float().numpy(),
            "best_concept": torch.where(fired, best, -1).numpy(),
            "best_f1": torch.where(fired, f1.gather(1, pick)[:, 0], float("nan")).float().numpy(),
            "best_precision": torch.where(fired, precision.gather(1, pick)[:, 0], float("nan")).float().numpy(),
            "best_recall": torch.where(fired, recall.gather(1, pick)[:, 0], float("nan")).float().numpy()}


# --------------------------------------------------------------------------- plots


def plot_density(stats: FeatureStats, ax=None):
    """Histogram of log10 density over the latents that fired; dead latents counted in the title."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3))[1]
    alive = stats.density[stats.fires > 0]
    if len(alive):
        ax.hist(np.log10(alive), bins=50, color="tab:blue")
    dead = int((stats.fires == 0).sum())
    ax.set(xlabel="log10 density (share of tokens a latent fires on)", ylabel="latents",
           title=f"{len(alive)} latents fired on {stats.n_tokens:,} tokens; {dead} never did")
    return ax


def plot_activation_histogram(stats: FeatureStats, latent: int, ax=None):
    """A latent's non-zero activations, histogrammed between 0 and its max."""
    import matplotlib.pyplot as plt

    latent = stats._check_latent(latent)
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    edges, counts = stats.hist_edges[latent], stats.hist_counts[latent]
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:orange")
    ax.set(xlabel="activation", ylabel="tokens",
           title=f"latent {latent}: density {stats.density[latent]:.3%}, max {stats.max_activation[latent]:.3g}")
    return ax
