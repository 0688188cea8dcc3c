"""
The feature explorer: browse an SAE's feature cards in Jupyter with ipywidgets.

`FeatureExplorer(stats)` shows one card at a time and lets you

- step through the latents sorted by density, max activation or concept match (a slider over ranks),
  or type a latent's number;
- find latents by token (whose top activations peak on it), by TinyWorld concept (best F1) or by
  number (`search_features`);
- type a prompt and see each token's most active latents (`prompt_html`), then pick one to view.

Where widgets are not live (a notebook rendered to HTML, or on GitHub) the explorer's output also
carries a static HTML fallback: an index and the cards of the first latents in the current order.
"""

from __future__ import annotations

from html import escape

import ipywidgets as widgets

from saekit.cards import card_html, cards_html, index_html
from saekit.features import FeatureStats

SORTS = {"density": "density", "max activation": "max", "concept F1": "concept"}


def search_features(stats: FeatureStats, query: str, k: int = 10) -> list[tuple[int, str]]:
    """Latents matching `query`: a latent number, or a TinyWorld concept name and/or a token's text.

    Returns (latent, label) pairs: the concept's best latents (by F1) first, then latents whose top
    activations peak on the token (most such examples first); an empty list when nothing matches.
    """
    query = query.strip()
    if not query:
        return []
    if query.isdigit():
        latent = int(query)
        return [(latent, f"latent {latent}")] if latent < stats.d_sae else []
    found = []
    if stats.has_concepts and query in stats.concept_names:
        found += [(i, f"{i}: concept {query}, F1 {f1:.2f}") for i, f1 in stats.find_concept(query, k)]
    found += [(i, f"{i}: peaks on {query!r} in {n} top examples") for i, n in stats.find_token(query, k)]
    return found


def prompt_html(stats: FeatureStats, text: str, k: int = 3) -> str:
    """A table of the prompt's tokens, each with its k most active latents."""
    return _prompt_table(stats.prompt_features(text, k))


def _prompt_table(entries: list[dict]) -> str:
    rows = []
    for entry in entries:
        features = ", ".join(f"#{i} ({v:.3g})" for i, v in entry["features"]) or "–"
        rows.append(f'<tr><td style="font-family:monospace;white-space:pre">{escape(repr(entry["token"]))}</td>'
                    f"<td>{escape(features)}</td></tr>")
    return f'<table class="sk-index"><tr><th>token</th><th>top latents (activation)</th></tr>{"".join(rows)}</table>'


class FeatureExplorer:
    """An ipywidgets browser over `FeatureStats`; display it as the last expression of a cell."""

    def __init__(self, stats: FeatureStats, sort: str = "density", static_cards: int = 3):
        if sort not in SORTS.values():
            raise ValueError(f"sort must be one of {list(SORTS.values())}, got {sort!r}")
        if sort == "concept" and not stats.has_concepts:
            raise ValueError("sorting by concept needs statistics of a store with TinyWorld labels")
        self.stats, self.static_cards = stats, static_cards
        options = [(label, key) for label, key in SORTS.items() if key != "concept" or stats.has_concepts]
        self.sort = widgets.Dropdown(options=options, value=sort, description="sort by")
        self.order = stats.order(sort)
        self.rank = widgets.IntSlider(min=0, max=max(0, len(self.order) - 1), description="rank",
                                      continuous_update=False)
        self.latent = widgets.BoundedIntText(min=0, max=stats.d_sae - 1, description="latent")
        self.search = widgets.Text(placeholder="a token, a concept or a latent number", description="find",
                                   continuous_update=False)
        self.matches = widgets.Dropdown(options=[], description="matches")
        self.prompt = widgets.Text(placeholder="type a prompt, press enter", description="prompt",
                                   continuous_update=False, layout=widgets.Layout(width="60%"))
        self.prompt_table = widgets.HTML()
        self.card = widgets.HTML()
        self.sort.observe(self._on_sort, names="value")
        self.rank.observe(lambda change: self.show(int(self.order[change["new"]])), names="value")
        self.latent.observe(lambda change: self.show(change["new"]), names="value")
        self.search.observe(self._on_search, names="value")
        self.matches.observe(self._on_match, names="value")
        self.prompt.observe(self._on_prompt, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.sort, self.rank, self.latent]),
            widgets.HBox([self.search, self.matches]),
            self.prompt, self.prompt_table, self.card])
        self.shown = -1
        self.show(int(self.order[0]) if len(self.order) else 0)

    def show(self, latent: int) -> None:
        """Show a latent's card (and keep the latent box in step)."""
        latent = self.stats._check_latent(latent)
        if latent == self.shown:
            return
        self.shown = latent
        self.latent.value = latent
        self.card.value = card_html(self.stats, latent)

    def _on_sort(self, change) -> None:
        self.order = self.stats.order(change["new"])
        self.rank.max = max(0, len(self.order) - 1)
        self.rank.value = 0
        if len(self.order):
            self.show(int(self.order[0]))

    def _on_search(self, change) -> None:
        found = search_features(self.stats, change["new"])
        self.matches.options = [(label, latent) for latent, label in found] or [("no match", -1)]
        if found:
            self.show(found[0][0])

    def _on_match(self, change) -> None:
        if change["new"] is not None and change["new"] >= 0:
            self.show(change["new"])

    def _on_prompt(self, change) -> None:
        if not change["new"].strip():
            self.prompt_table.value = ""
            return
        try:
            entries = self.stats.prompt_features(change["new"], k=3)
        except ValueError as exc:  # statistics loaded without the SAE and model, a prompt too long, ...
            self.prompt_table.value = f"<p>{escape(str(exc))}</p>"
            return
        self.prompt_table.value = _prompt_table(entries)
        seen = dict.fromkeys(i for entry in entries for i, _ in entry["features"])
        self.matches.options = [(f"{i}: in the prompt", i) for i in seen] or [("no latent fired", -1)]

    def static_html(self) -> str:
        """What a page without live widgets shows: an index and the first cards in the current order."""
        first = [int(i) for i in self.order[:self.static_cards]]
        if self.shown >= 0 and self.shown not in first:
            first.insert(0, self.shown)
        note = ('<p class="sk-small">Static view (widgets are not live here): the first latents by '
                f"{escape(self.sort.label)}. Run the notebook to explore all {self.stats.d_sae}.</p>")
        return cards_html(self.stats, [], standalone=True) + note + index_html(self.stats, first) + cards_html(
            self.stats, first, standalone=False)

    def _repr_mimebundle_(self, **kwargs) -> dict:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.static_html()
        return bundle

