"""
`saekit demo`: the whole pipeline on one page — collect, train, evaluate, look.

On the default model (or any nanochat checkpoint): collect activations at a middle layer's
residual stream, train a TopK SAE on them, evaluate it on held-out text (fidelity, the spliced
model's loss, TinyWorld concept recovery), gather feature statistics and write one self-contained
HTML report with the numbers, the concept table and the cards of the latents that match concepts
best. The SAE itself is saved beside the report in SAELens format, ready for `saekit eval`.
"""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from saekit.atomic import write_text_atomic
from saekit.cards import CSS, cards_html, index_html
from saekit.evaluate import concept_recovery, downstream_metrics, reconstruction_metrics
from saekit.features import feature_statistics
from saekit.nanochat import load_model
from saekit.sae import SAEConfig, create_sae
from saekit.store import collect_activations
from saekit.train import TrainConfig, train_sae


@dataclass
class DemoConfig:
    d_sae: int = 2048
    k: int = 32
    steps: int = 300
    batch_size: int = 4096
    train_tokens: int = 1_000_000  # activations collected for training (reused from the cache when possible)
    eval_tokens: int = 100_000  # held-out activations (TinyWorld seed 1) for metrics and feature statistics
    downstream_rows: int = 32
    n_cards: int = 12
    seed: int = 0


def run_demo(out_dir: str | os.PathLike, model_path: str | None = None, hook: str | None = None,
             cfg: DemoConfig | None = None, progress: bool = True) -> Path:
    """Run the pipeline and write `out_dir/report.html` (and the SAE in `out_dir/sae`); returns the report's path."""
    cfg = cfg or DemoConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    timings = {}

    def stage(name, start):
        timings[name] = time.perf_counter() - start
        if progress:
            print(f"{name}: {timings[name]:.0f} s", flush=True)

    start = time.perf_counter()
    model, tokenizer = load_model(model_path)
    hook = hook or f"blocks.{model.config.n_layer // 2}.hook_resid_post"
    if progress:
        print(f"saekit demo: a TopK SAE ({cfg.d_sae} latents, k = {cfg.k}) on {model.name}'s {hook}, trained on "
              f"{cfg.train_tokens:,} tokens of TinyWorld stories and evaluated on {cfg.eval_tokens:,} others",
              flush=True)
    if model_path is None:
        from saekit.course import course_store  # the course's cached store: collected once, shared with notebooks

        store = course_store(cfg.train_tokens, hook, progress=progress)
    else:
        store = collect_activations(model, tokenizer, hook, cfg.train_tokens, out_dir / "store", progress=progress)
    held_out = collect_activations(model, tokenizer, hook, cfg.eval_tokens, None, source="tinyworld:1",
                                   progress=progress)
    stage("collect activations", start)

    start = time.perf_counter()
    sae_cfg = SAEConfig(architecture="topk", d_in=store.d_in(hook), d_sae=cfg.d_sae, k=cfg.k, hook_name=hook,
                        metadata={"model_name": model.name})
    result = train_sae(create_sae(sae_cfg), store, TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size,
                                                               seed=cfg.seed), hook, progress=progress)
    result.save(out_dir / "sae")
    sae = result.raw_sae()
    stage("train a TopK SAE", start)

    start = time.perf_counter()
    reconstruction = reconstruction_metrics(sae, held_out)
    downstream = downstream_metrics(model, tokenizer, sae, n_rows=cfg.downstream_rows)
    concepts = concept_recovery(sae, held_out)
    stage("evaluate", start)
    if progress:
        print(f"  explained variance {reconstruction.explained_variance:.3f} at L0 {reconstruction.l0:.0f}; "
              f"the model's loss with the SAE spliced in {downstream.delta_ce:+.4f} nats; "
              f"concept coverage {concepts.coverage:.2f} (mean best F1 over {len(concepts.rows)} concepts)", flush=True)

    start = time.perf_counter()
    stats = feature_statistics(sae, held_out, model, tokenizer, progress=progress)
    shown = [int(i) for i in stats.order("concept")[:cfg.n_cards]]
    stage("feature statistics", start)

    page = _report_html(model.name, hook, sae_cfg, result.tokens, reconstruction.summary(), downstream.summary(),
                        concepts, stats, shown, timings)
    return write_text_atomic(out_dir / "report.html", page)


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="sk-index"><tr>{head}</tr>{body}</table>'


def _report_html(model_name, hook, sae_cfg, tokens, reconstruction, downstream, concepts, stats, shown,
                 timings) -> str:
    explain = {"explained_variance": "share of the activations' variance reconstructed (about the mean)",
               "l2_ratio": "||x_hat|| / ||x||: below 1 means shrinkage", "l0": "active latents per token",
               "dead_fraction": "latents that never fired on held-out tokens",
               "delta_ce": "extra next-token loss (nats) with the SAE spliced in",
               "kl_sae": "KL of the spliced model's predictions from the clean model's",
               "ce_loss_recovered": "(CE_zero - CE_SAE) / (CE_zero - CE_clean)"}
    metric_rows = [[k, f"{v:.4g}", explain.get(k, "")] for k, v in {**reconstruction, **downstream}.items()]
    concept_rows = [[r["concept"], r["kind"], r["latent"], f"{r['precision']:.2f}", f"{r['recall']:.2f}",
                     f"{r['f1']:.2f}", len(r["split_latents"])] for r in sorted(concepts.rows, key=lambda r: -r["f1"])]
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>saekit demo: {html.escape(model_name)}</title>
<style>{CSS} body{{margin:20px;background:#fafafa;font-family:system-ui,sans-serif;font-size:14px}}
section{{max-width:1100px}}</style></head><body>
<h1>saekit demo</h1>
<p>A TopK SAE ({sae_cfg.d_sae:,} latents, k = {sae_cfg.k}) trained on {tokens:,} activations of
<b>{html.escape(model_name)}</b> at <code>{html.escape(hook)}</code>, evaluated on held-out TinyWorld text.
Stages: {html.escape(stages)}. The SAE is saved in SAELens format in <code>sae/</code>.</p>
<section><h2>How good is the SAE?</h2>{_table(metric_rows, ["metric", "value", "meaning"])}</section>
<section><h2>Which ground-truth concepts does it find?</h2>
<p>For each TinyWorld concept, the single latent whose firing best matches the concept's token labels.
Coverage (mean best F1) {concepts.coverage:.2f}; {concepts.concepts_found} concepts with F1 &ge; 0.8.
<i>split</i>: latents that each fire mostly inside the concept.</p>
{_table(concept_rows, ["concept", "kind", "latent", "precision", "recall", "F1", "split"])}</section>
<section><h2>Feature cards</h2><p>The {len(shown)} latents that match a concept best. Hover a token for its
activation.</p>{index_html(stats, shown)}{cards_html(stats, shown, standalone=False)}</section>
</body></html>
"""
