"""
Feature cards: a latent's statistics (`saekit.features.FeatureStats`) as HTML.

A card shows the latent's density and activations, its best-matching TinyWorld concept, a histogram
of its activations, the logit lens of its decoder direction (tokens and a histogram), correlated
latents, its top-activating contexts and samples from equal-width activation intervals. Tokens are
shaded by activation (relative to the latent's max), their values appear on hover (`title`), and
the centre token of each example is outlined.

Everything is plain HTML with inline CSS and SVG: no scripts, fonts or other external assets, so
a card renders the same in Jupyter, in a rendered notebook and in a saved page
(`write_feature_page`). All text, token strings included, is HTML-escaped.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from saekit.atomic import write_text_atomic
from saekit.features import DROPPED, NO_TOKEN, FeatureStats

CSS = """
.sk-card{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;color:#1b1b1b;background:#fff;
 border:1px solid #d0d0d0;border-radius:6px;padding:10px 14px;margin:10px 0;max-width:1100px}
.sk-card h3{margin:0 0 4px 0;font-size:16px}
.sk-card h4{margin:10px 0 4px 0;font-size:13px;color:#444}
.sk-meta{color:#444;margin-bottom:6px}
.sk-meta b{color:#1b1b1b}
.sk-panels{display:flex;flex-wrap:wrap;gap:18px}
.sk-panel{min-width:200px}
.sk-logits{display:flex;gap:14px}
.sk-logits table{border-collapse:collapse}
.sk-logits td{padding:0 6px 0 0;font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.sk-pos{color:#0a7d32}.sk-neg{color:#b3261e}
.sk-example{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;line-height:1.7;overflow-x:auto}
.sk-value{display:inline-block;min-width:56px;color:#666;text-align:right;margin-right:8px}
.sk-example span{border-radius:2px;padding:1px 0}
.sk-example .sk-value{padding:0}
.sk-max{outline:2px solid #1b1b1b;font-weight:bold}
.sk-gap{color:#999}
.sk-interval{color:#444;margin-top:6px}
.sk-small{color:#666;font-size:12px}
.sk-index td,.sk-index th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _token_text(text: str) -> str:
    """A token's text made visible: newlines and tabs as symbols (spaces stay, the block keeps white space)."""
    return text.replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "\u240d")


def _shade(value: float, scale: float) -> str:
    alpha = 0.0 if scale <= 0 else min(1.0, max(0.0, value / scale))
    return f"background:rgba(255,120,0,{alpha:.3f})"


def _number(x: float) -> str:
    return f"{x:.3g}" if np.isfinite(x) else "–"


def _bars_svg(edges: np.ndarray, counts: np.ndarray, colour: str, label: str, width: int = 260,
              height: int = 70) -> str:
    """A histogram as inline SVG; each bar's range and count on hover."""
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) == 0 or counts.max() <= 0:
        return '<div class="sk-small">(no data)</div>'
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo if hi > lo else 1.0
    bars = []
    for a, b, c in zip(edges[:-1], edges[1:], counts):
        x = (a - lo) / span * width
        w = max(0.5, (b - a) / span * width - 0.3)
        h = c / counts.max() * (height - 4)
        bars.append(f'<rect x="{x:.1f}" y="{height - h:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{colour}">'
                    f'<title>{_esc(f"{a:.4g} to {b:.4g}: {int(c):,}")}</title></rect>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}" role="img" '
            f'aria-label="{_esc(label)}">{"".join(bars)}'
            f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#888" stroke-width="1"/>'
            f'<text x="0" y="{height + 13}" font-size="10" fill="#555">{_esc(f"{lo:.3g}")}</text>'
            f'<text x="{width}" y="{height + 13}" font-size="10" fill="#555" text-anchor="end">'
            f'{_esc(f"{hi:.3g}")}</text></svg>')


def _example_html(stats: FeatureStats, tokens: np.ndarray, values: np.ndarray, scale: float) -> str:
    """One window: tokens shaded by activation, the centre outlined; slots without a token are left out."""
    present = np.flatnonzero(tokens != NO_TOKEN)
    parts = []
    for slot in range(present[0], present[-1] + 1):
        token, value = int(tokens[slot]), float(values[slot])
        text = stats.token_str(token)
        if token == DROPPED:
            parts.append(f'<span class="sk-gap" title="a special token the store left out">{_esc(text)}</span>')
            continue
        classes = ' class="sk-max"' if slot == stats.left else ""
        style = f' style="{_shade(value, scale)}"' if value > 0 else ""  # zeros unshaded: smaller pages
        hover = f"{text!r}: {value:.4g}"
        parts.append(f'<span{classes}{style} title="{_esc(hover)}">{_esc(_token_text(text))}</span>')
    centre = float(values[stats.left])
    return f'<div class="sk-example"><span class="sk-value">{_esc(f"{centre:.3g}")}</span>{"".join(parts)}</div>'


def _logit_table(stats: FeatureStats, ids: np.ndarray, values: np.ndarray, css: str) -> str:
    rows = "".join(f'<tr><td class="{css}">{_esc(repr(stats.token_strings[int(t)]))}</td>'
                   f'<td class="{css}">{v:+.3f}</td></tr>' for t, v in zip(ids, values))
    return f"<table>{rows}</table>"


def _latent_list(ids: np.ndarray, values: np.ndarray, name: str) -> str:
    items = [f"#{int(i)} ({name} {v:.2f})" for i, v in zip(ids, values) if i >= 0 and np.isfinite(v)]
    return _esc(", ".join(items) or "–")


def card_html(stats: FeatureStats, latent: int, standalone: bool = True) -> str:
    """The card of one latent as an HTML fragment (with its CSS when `standalone`)."""
    i = stats._check_latent(latent)
    scale = float(stats.max_activation[i])
    meta = [f"density <b>{stats.density[i]:.4%}</b> ({int(stats.fires[i]):,} of {stats.n_tokens:,} tokens)",
            f"max <b>{_number(scale)}</b>", f"mean <b>{_number(float(stats.mean_activation[i]))}</b>"]
    if stats.has_concepts and stats.best_concept[i] >= 0:
        meta.append(f"best concept <b>{_esc(stats.concept_names[stats.best_concept[i]])}</b> "
                    f"(F1 {stats.best_f1[i]:.2f}, precision {stats.best_precision[i]:.2f}, "
                    f"recall {stats.best_recall[i]:.2f})")
    out = [f'<div class="sk-card" id="latent-{i}">', f"<h3>Latent {i}</h3>",
           f'<div class="sk-meta">{" · ".join(meta)}</div>']
    if stats.fires[i] == 0:
        out.append('<div class="sk-small">This latent never fired on these tokens (dead).</div>')
    out.append('<div class="sk-panels">')
    out.append('<div class="sk-panel"><h4>Activations (non-zero)</h4>'
               + _bars_svg(stats.hist_edges[i], stats.hist_counts[i], "#ff7800", f"activation histogram {i}")
               + "</div>")
    out.append('<div class="sk-panel"><h4>Logit lens</h4><div class="sk-logits">'
               + _logit_table(stats, stats.logit_top_ids[i], stats.logit_top_values[i], "sk-pos")
               + _logit_table(stats, stats.logit_bottom_ids[i], stats.logit_bottom_values[i], "sk-neg")
               + "</div>" + _bars_svg(stats.logit_hist_edges[i], stats.logit_hist_counts[i], "#5470c6",
                                      f"logit histogram {i}") + "</div>")
    out.append('<div class="sk-panel"><h4>Related latents</h4>'
               f'<div>fires with: {_latent_list(stats.correlated_ids[i], stats.correlated_pearson[i], "r")}</div>'
               f'<div>decoder like: {_latent_list(stats.decoder_cosine_ids[i], stats.decoder_cosine[i], "cos")}'
               f'</div><div class="sk-small">correlations over {stats.correlation_tokens:,} tokens</div></div>')
    out.append("</div>")
    tops = [k for k in range(stats.top_index.shape[1]) if stats.top_index[i, k] >= 0]
    if tops:
        out.append(f"<h4>Top activations ({len(tops)})</h4>")
        out += [_example_html(stats, stats.top_tokens[i, k], stats.top_values[i, k], scale) for k in tops]
    for q in reversed(range(stats.interval_edges.shape[1] - 1)):
        samples = [s for s in range(stats.sample_index.shape[2]) if stats.sample_index[i, q, s] >= 0]
        if not samples:
            continue
        lo, hi = stats.interval_edges[i, q], stats.interval_edges[i, q + 1]
        count = int(stats.interval_counts[i, q])
        out.append(f'<div class="sk-interval">Interval {_esc(f"{lo:.3g} to {hi:.3g}")}: '
                   f"{count:,} tokens ({count / stats.n_tokens:.3%}), {len(samples)} random samples</div>")
        out += [_example_html(stats, stats.sample_tokens[i, q, s], stats.sample_values[i, q, s], scale)
                for s in samples]
    out.append("</div>")
    body = "\n".join(out)
    return f"<style>{CSS}</style>\n{body}" if standalone else body


def index_html(stats: FeatureStats, latents: Iterable[int]) -> str:
    """A table of latents (density, max, best concept, top logit-lens tokens) linking to their cards."""
    rows = []
    for latent in latents:
        i = stats._check_latent(latent)
        concept = ""
        if stats.has_concepts and stats.best_concept[i] >= 0:
            concept = f"{stats.concept_names[stats.best_concept[i]]} ({stats.best_f1[i]:.2f})"
        logits = ", ".join(repr(stats.token_strings[int(t)]) for t in stats.logit_top_ids[i][:3])
        rows.append(f'<tr><td><a href="#latent-{i}">{i}</a></td><td>{stats.density[i]:.3%}</td>'
                    f"<td>{_number(float(stats.max_activation[i]))}</td><td>{_esc(concept)}</td>"
                    f"<td>{_esc(logits)}</td></tr>")
    return ('<table class="sk-index"><tr><th>latent</th><th>density</th><th>max</th><th>best concept (F1)</th>'
            f"<th>logit lens</th></tr>{''.join(rows)}</table>")


def cards_html(stats: FeatureStats, latents: Iterable[int], standalone: bool = True) -> str:
    """Several cards, with the CSS once."""
    body = "\n".join(card_html(stats, i, standalone=False) for i in latents)
    return f"<style>{CSS}</style>\n{body}" if standalone else body


def write_feature_page(stats: FeatureStats, features: Iterable[int], path: str | os.PathLike,
                       title: str | None = None) -> Path:
    """One self-contained HTML page (no external assets) with an index and the cards of `features`."""
    latents = [stats._check_latent(i) for i in features]
    if not latents:
        raise ValueError("write_feature_page needs at least one latent")
    title = title or f"saekit features: {stats.hook}"
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{CSS} body{{margin:20px;background:#fafafa}}</style></head>"
            f"<body><h2>{_esc(title)}</h2><p class=\"sk-small\">{stats.d_sae} latents, statistics over "
            f"{stats.n_tokens:,} tokens. Hover a token for its activation.</p>"
            f"{index_html(stats, latents)}\n{cards_html(stats, latents, standalone=False)}</body></html>\n")
    return write_text_atomic(Path(path), page)
