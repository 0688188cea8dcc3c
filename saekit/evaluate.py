"""
Evaluating SAEs: fidelity, sparsity, what their errors cost the model, and what their latents mean.

Every number is computed in the raw activation space (pass a raw-space SAE: loaded from disk, or
`TrainResult.raw_sae()`), with special tokens excluded. Three families:

- `reconstruction_metrics` — over tokens of an activation store (x an activation, x_hat its
  reconstruction, f the code):

| metric | definition |
| --- | --- |
| mse | mean over tokens of ||x - x_hat||^2 |
| explained_variance | 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (variance about the mean, not about zero) |
| fvu | 1 - explained_variance |
| cosine | mean cos(x, x_hat) |
| l2_ratio | mean ||x_hat|| / ||x||: below 1 means the SAE shrinks its reconstructions |
| relative_bias | E||x_hat||^2 / E[x . x_hat]: the gamma minimising ||x_hat / gamma - x||; below 1 = shrinkage |
| l0, l1 | mean number of active latents per token; mean sum of the code |
| dead_fraction, dense_fraction | latents that never fired on the evaluated tokens; that fired on more than 10% |

- `downstream_metrics` — the SAE's reconstruction spliced into the model at its hook point: the
  next-token cross-entropy clean, with the splice and with the activation zeroed, giving the CE loss
  recovered (zero - SAE) / (zero - clean), delta CE = CE_SAE - CE_clean (nats), the KL divergence
  of the spliced model's predictions from the clean ones, and the KL score 1 - KL_SAE / KL_zero.
- `concept_recovery` — on TinyWorld, how well each ground-truth concept is detected by its best
  single latent ("fires" vs "carries the concept"), and how purely each latent fires.

`sweep` trains several SAEs in one pass and evaluates them all; `plot_pareto` draws the frontiers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from saekit.sae.base import SAE
from saekit.store import unpack_labels


@dataclass
class ReconstructionMetrics:
    tokens: int
    mse: float
    explained_variance: float
    fvu: float
    cosine: float
    l2_ratio: float
    relative_bias: float
    l0: float
    l1: float
    dead_fraction: float
    dense_fraction: float
    firing_frequency: np.ndarray  # per latent, over the evaluated tokens

    def summary(self) -> dict[str, float]:
        """The scalar metrics, rounded for printing."""
        return {k: round(v, 4) for k, v in asdict(self).items() if isinstance(v, float)}


@torch.no_grad()
def reconstruction_metrics(sae: SAE, store, hook: str | None = None, n_tokens: int = 200_000,
                           batch_size: int = 8192) -> ReconstructionMetrics:
    """Reconstruction and sparsity metrics of a raw-space SAE over the first `n_tokens` of a store."""
    sae = sae.eval()
    n = 0
    sums = dict.fromkeys(["sq_err", "sq_norm", "cos", "ratio", "hat_sq", "dot", "l0", "l1"], 0.0)
    total = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    device = next(sae.parameters()).device
    for x in _raw_batches(store, hook, n_tokens, batch_size):
        x = x.to(device)
        f = sae.encode(x)
        x_hat = sae.decode(f).double()
        x64 = x.double()
        sums["sq_err"] += float((x64 - x_hat).pow(2).sum())
        sums["sq_norm"] += float(x64.pow(2).sum())
        x_norm, hat_norm = x64.norm(dim=1), x_hat.norm(dim=1)
        sums["cos"] += float(((x64 * x_hat).sum(1) / (x_norm * hat_norm).clamp_min(1e-12)).sum())
        sums["ratio"] += float((hat_norm / x_norm.clamp_min(1e-12)).sum())
        sums["hat_sq"] += float(hat_norm.pow(2).sum())
        sums["dot"] += float((x64 * x_hat).sum())
        active = f > 0
        sums["l0"] += float(active.sum())
        sums["l1"] += float(f.double().sum())
        fires += active.sum(0).double().cpu()
        total += x64.sum(0).cpu()
        n += len(x)
    if n == 0:
        raise ValueError("no tokens to evaluate on")
    variance = sums["sq_norm"] - float(total.pow(2).sum()) / n  # sum of ||x - mean||^2
    ev = 1 - sums["sq_err"] / variance
    frequency = (fires / n).numpy()
    return ReconstructionMetrics(
        tokens=n, mse=sums["sq_err"] / n, explained_variance=ev, fvu=1 - ev, cosine=sums["cos"] / n,
        l2_ratio=sums["ratio"] / n, relative_bias=sums["hat_sq"] / sums["dot"] if sums["dot"] else float("nan"),
        l0=sums["l0"] / n,
        l1=sums["l1"] / n, dead_fraction=float((frequency == 0).mean()),
        dense_fraction=float((frequency > 0.1).mean()), firing_frequency=frequency)


def _raw_batches(store, hook, n_tokens, batch_size):
    """The store's first n_tokens raw activations, in order, batch by batch."""
    remaining = n_tokens
    for index in range(len(store.shards)):
        shard = store.shard_activations(index, hook)
        for start in range(0, len(shard), batch_size):
            if remaining <= 0:
                return
            x = shard[start:start + min(batch_size, remaining)].float()
            remaining -= len(x)
            yield x


# --------------------------------------------------------------------------- downstream: splicing into the model


@dataclass
class DownstreamMetrics:
    positions: int
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_loss_recovered: float
    delta_ce: float
    kl_sae: float
    kl_zero: float
    kl_score: float

    def summary(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items() if isinstance(v, float)}


@torch.no_grad()
def downstream_metrics(model, tokenizer, sae: SAE, hook: str | None = None, source="tinyworld:1",
                       n_rows: int = 32, context_size: int | None = None, batch_rows: int = 8,
                       keep_error: bool = False) -> DownstreamMetrics:
    """What the SAE's errors cost the model: next-token loss with x_hat spliced in at `hook`.

    Rows come from `source` (by default TinyWorld seed 1, which the SAE never trained on). The
    splice replaces the activation at every position whose token is not special (those were never
    in the SAE's training data); losses are averaged over the same positions. With `keep_error`,
    the SAE's error x - x_hat is added back, so the splice reproduces the clean model exactly —
    the baseline interventions on the code (steering, clamping) are measured against.
    """
    from saekit.data import pack_rows, text_source
    from saekit.hooks import patch

    sae = sae.eval()
    hook = hook or sae.cfg.hook_name
    context_size = context_size or min(getattr(getattr(model, "config", None), "sequence_len", 256), 256)
    rows = pack_rows(text_source(source).docs(tokenizer), context_size + 1)
    special = torch.tensor(sorted(tokenizer.special_id_set))
    device = next(model.parameters()).device
    sums = dict.fromkeys(["clean", "sae", "zero", "kl_sae", "kl_zero"], 0.0)
    positions = 0
    for start in range(0, n_rows, batch_rows):
        batch = [next(rows, None) for _ in range(min(batch_rows, n_rows - start))]
        batch = [row for row in batch if row is not None]
        if not batch:
            break
        ids = torch.from_numpy(np.stack([row.ids for row in batch])).to(device)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        keep = ~torch.isin(inputs, special.to(device))

        def splice(x, replacement):
            return torch.where(keep[..., None], replacement(x), x)

        def reconstruct(x):
            x_hat = sae.decode(sae.encode(x))
            return x_hat + (x - x_hat) if keep_error else x_hat

        logp = {"clean": model(inputs).log_softmax(-1)}
        with patch(model, hook, lambda x: splice(x, reconstruct)):
            logp["sae"] = model(inputs).log_softmax(-1)
        with patch(model, hook, lambda x: splice(x, torch.zeros_like)):
            logp["zero"] = model(inputs).log_softmax(-1)
        for name in ("clean", "sae", "zero"):
            ce = -logp[name].gather(-1, targets[..., None])[..., 0]
            sums[name] += float(ce[keep].double().sum())
        p_clean = logp["clean"].exp()
        for name in ("sae", "zero"):
            kl = (p_clean * (logp["clean"] - logp[name])).sum(-1)
            sums[f"kl_{name}"] += float(kl[keep].double().sum())
        positions += int(keep.sum())
    if positions == 0:
        raise ValueError("no positions to evaluate: the source gave no rows, or only special tokens")
    m = {k: v / positions for k, v in sums.items()}
    recovered = (m["zero"] - m["sae"]) / (m["zero"] - m["clean"]) if m["zero"] != m["clean"] else float("nan")
    return DownstreamMetrics(
        positions=positions, ce_clean=m["clean"], ce_sae=m["sae"], ce_zero=m["zero"], ce_loss_recovered=recovered,
        delta_ce=m["sae"] - m["clean"], kl_sae=m["kl_sae"], kl_zero=m["kl_zero"],
        kl_score=1 - m["kl_sae"] / m["kl_zero"] if m["kl_zero"] else float("nan"))


# --------------------------------------------------------------------------- ground truth: concept recovery


@dataclass
class ConceptRecovery:
    """How well TinyWorld's concepts are found among an SAE's latents."""

    rows: list[dict]  # per concept: kind, best latent, precision, recall, f1, frequency, split latents
    coverage: float  # mean best F1 over concepts
    concepts_found: int  # concepts whose best latent has F1 >= 0.8
    purity: np.ndarray  # per latent: share of its firing inside its best concept (nan if it never fired)
    best_concept: np.ndarray  # per latent: index of the concept it fires most within
    f1: np.ndarray  # [d_sae, n_concepts]

    def table(self, min_f1: float = 0.0) -> str:
        """The per-concept rows as aligned text, best concepts first."""
        lines = [f"{'concept':<17} {'kind':<9} {'latent':>6} {'precision':>9} {'recall':>7} {'F1':>6} {'split':>6}"]
        for r in sorted(self.rows, key=lambda r: -r["f1"]):
            if r["f1"] >= min_f1:
                lines.append(f"{r['concept']:<17} {r['kind']:<9} {r['latent']:>6} {r['precision']:>9.2f} "
                             f"{r['recall']:>7.2f} {r['f1']:>6.2f} {len(r['split_latents']):>6}")
        return "\n".join(lines)


def concept_scores(active: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """True positives, firing counts and label counts for `active` [n, d_sae] against `labels` [n, C] (bool)."""
    a, y = active.double(), labels.double()
    return {"tp": a.T @ y, "fires": a.sum(0), "positives": y.sum(0), "tokens": torch.tensor(float(len(a)))}


def scores_to_f1(tp: torch.Tensor, fires: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Precision, recall and F1 [d_sae, n_concepts] from `concept_scores`' counts."""
    return f1_from_counts(tp, fires[:, None], positives[None, :])


def f1_from_counts(tp: torch.Tensor, fires: torch.Tensor, positives: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Precision, recall and F1 from true positives, firing counts and label counts that broadcast together."""
    precision = tp / fires.clamp_min(1)
    recall = tp / positives.clamp_min(1)
    return precision, recall, 2 * precision * recall / (precision + recall).clamp_min(1e-12)


@torch.no_grad()
def concept_recovery(sae: SAE, store, hook: str | None = None, n_tokens: int = 200_000, batch_size: int = 8192,
                     split_precision: float = 0.5, split_recall: float = 0.05) -> ConceptRecovery:
    """For every TinyWorld concept, the latent whose firing best matches the concept's token labels.

    A concept counts as *split* when several latents each fire mostly inside it (precision at least
    `split_precision`) and each cover a real part of it (recall at least `split_recall`): the
    concept is spread over several latents instead of one — what feature absorption looks like.
    """
    from saekit.world import CONCEPTS

    sae = sae.eval()
    labels = torch.from_numpy(unpack_labels(store.label_masks()[:n_tokens]))  # unpack only what is read
    device = next(sae.parameters()).device
    totals = None
    offset = 0
    for x in _raw_batches(store, hook, n_tokens, batch_size):
        scores = concept_scores((sae.encode(x.to(device)) > 0).cpu(), labels[offset:offset + len(x)])
        totals = scores if totals is None else {k: totals[k] + v for k, v in scores.items()}
        offset += len(x)
    precision, recall, f1 = scores_to_f1(totals["tp"], totals["fires"], totals["positives"])
    rows = []
    for c, concept in enumerate(CONCEPTS):
        best = int(f1[:, c].argmax())
        split = torch.nonzero((precision[:, c] >= split_precision) & (recall[:, c] >= split_recall)).flatten()
        rows.append({"concept": concept.name, "kind": concept.kind, "latent": best,
                     "precision": float(precision[best, c]), "recall": float(recall[best, c]),
                     "f1": float(f1[best, c]), "frequency": float(totals["positives"][c] / totals["tokens"]),
                     "split_latents": split.tolist()})
    fired = totals["fires"] > 0
    purity = torch.full((sae.cfg.d_sae,), float("nan"), dtype=torch.float64)
    purity[fired] = (totals["tp"].max(dim=1).values / totals["fires"].clamp_min(1))[fired]
    best_f1 = torch.tensor([r["f1"] for r in rows])
    return ConceptRecovery(rows, float(best_f1.mean()), int((best_f1 >= 0.8).sum()), purity.numpy(),
                           totals["tp"].argmax(dim=1).numpy(), f1.numpy())


def plot_concepts(report: ConceptRecovery, ax=None):
    """Best-latent F1 of every concept, coloured by kind."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(8, 8))[1]
    colours = {"lexical": "tab:blue", "span": "tab:orange", "topic": "tab:green", "position": "tab:red"}
    rows = sorted(report.rows, key=lambda r: r["f1"])
    ax.barh([r["concept"] for r in rows], [r["f1"] for r in rows], color=[colours[r["kind"]] for r in rows])
    ax.axvline(0.8, color="k", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 of the best single latent")
    ax.set_title(f"coverage {report.coverage:.2f}; {report.concepts_found} concepts with F1 >= 0.8")
    return ax


@dataclass
class ConceptProbes:
    """How well each TinyWorld concept can be read out *linearly* from the activations: the ceiling for one latent."""

    rows: list[dict]  # per concept: kind, precision, recall, f1 on held-out tokens, frequency
    mean_f1: float

    def f1(self) -> dict[str, float]:
        return {r["concept"]: r["f1"] for r in self.rows}


@torch.no_grad()
def concept_probes(store, hook: str | None = None, n_tokens: int = 100_000, thresholds: int = 64) -> ConceptProbes:
    """A least-squares linear probe per concept, fitted on the first half of `n_tokens` tokens, scored on the second.

    Every concept gets its own direction and bias (one multi-output least-squares fit) and its own threshold,
    the one with the best F1 on the training half among `thresholds` quantiles of its scores. The held-out F1
    says how linearly present a concept is; a single SAE latent (a direction, a bias, a ReLU) can hardly do
    better, so comparing a latent's F1 with this one separates "the model does not represent it" from "the
    SAE did not find it".
    """
    from saekit.world import CONCEPTS

    x = torch.cat(list(_raw_batches(store, hook, n_tokens, 65_536))).double()
    y = torch.from_numpy(unpack_labels(store.label_masks()[:len(x)])).double()
    half = len(x) // 2
    design = torch.cat([x - x[:half].mean(0), torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    weights = torch.linalg.lstsq(design[:half], y[:half]).solution
    scores = design @ weights
    quantiles = torch.linspace(0.5, 1.0, thresholds + 1, dtype=x.dtype)[:-1]
    cuts = torch.quantile(scores[:half].float(), quantiles.float(), dim=0).double()  # [thresholds, C]
    fires = scores[:half, None, :] > cuts[None]  # [half, thresholds, C]
    tp = (fires & (y[:half, None, :] > 0)).sum(0).double()
    _, _, train_f1 = f1_from_counts(tp, fires.sum(0).double(), y[:half].sum(0))
    best = cuts.gather(0, train_f1.argmax(0, keepdim=True))[0]  # [C]
    test_fires, test_y = scores[half:] > best, y[half:] > 0
    tp, n_fires, positives = (test_fires & test_y).sum(0).double(), test_fires.sum(0).double(), test_y.sum(0).double()
    precision, recall, f1 = f1_from_counts(tp, n_fires, positives)
    rows = [{"concept": c.name, "kind": c.kind, "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "frequency": float(positives[i] / len(test_y))} for i, c in enumerate(CONCEPTS)]
    return ConceptProbes(rows, float(f1.mean()))


# --------------------------------------------------------------------------- sweeps and Pareto frontiers


def evaluate_sae(sae: SAE, store, hook: str | None = None, model=None, tokenizer=None, n_tokens: int = 100_000,
                 downstream_rows: int = 16, source="tinyworld:1") -> dict:
    """Every metric that applies: reconstruction; downstream if a model is given; concepts if the store has labels.

    Returns plain numbers (JSON-ready); `source` is the text the downstream rows come from.
    """
    report = {"reconstruction": reconstruction_metrics(sae, store, hook, n_tokens).summary()}
    if model is not None:
        report["downstream"] = downstream_metrics(model, tokenizer, sae, hook, source=source,
                                                  n_rows=downstream_rows).summary()
    if getattr(store, "has_labels", False):
        concepts = concept_recovery(sae, store, hook, n_tokens)
        report["concepts"] = {"coverage": round(concepts.coverage, 4), "concepts_found": concepts.concepts_found,
                              "rows": concepts.rows}
    return report


def sweep(configs: list, store, train_cfg, hook: str | None = None, eval_store=None, model=None, tokenizer=None,
          n_tokens: int = 100_000, downstream_rows: int = 16, progress: bool = True) -> list[dict]:
    """Train every config in one pass over `store` (the same batches for all), then evaluate each.

    Returns one flat row per SAE: architecture, its sparsity setting and the headline metrics
    (L0, FVU, delta CE and mean concept F1 where available) — the points of a Pareto plot.
    """
    from saekit.sae import create_sae
    from saekit.train import train_saes

    results = train_saes([create_sae(c) for c in configs], store, train_cfg, hook, progress=progress)
    rows = []
    for cfg, result in zip(configs, results):
        report = evaluate_sae(result.raw_sae(), eval_store or store, hook, model, tokenizer, n_tokens, downstream_rows)
        row = {"architecture": cfg.architecture, "k": cfg.k, "sparsity_coefficient": cfg.sparsity_coefficient,
               "l0": report["reconstruction"]["l0"], "fvu": report["reconstruction"]["fvu"],
               "explained_variance": report["reconstruction"]["explained_variance"]}
        if "downstream" in report:
            row["delta_ce"] = report["downstream"]["delta_ce"]
            row["ce_loss_recovered"] = report["downstream"]["ce_loss_recovered"]
        if "concepts" in report:
            row["mean_concept_f1"] = report["concepts"]["coverage"]
        rows.append(row)
    return rows


def plot_pareto(rows: list[dict], metrics: tuple[str, ...] = ("fvu", "delta_ce", "mean_concept_f1")):
    """One panel per metric against L0, one line per architecture (its sparsity settings, by L0)."""
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if all(m in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for architecture in dict.fromkeys(r["architecture"] for r in rows):
            points = sorted((r["l0"], r[metric]) for r in rows if r["architecture"] == architecture)
            ax.plot(*zip(*points), "o-", label=architecture)
        ax.set_xscale("log")
        ax.set(xlabel="L0", ylabel=metric.replace("_", " "))
    axes[0][0].legend()
    fig.tight_layout()
    return fig
