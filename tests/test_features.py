"""Feature statistics against brute force, windows across batches and documents, cards, the explorer."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from saekit.cards import card_html, write_feature_page
from saekit.evaluate import concept_recovery
from saekit.explorer import FeatureExplorer, prompt_html, search_features
from saekit.features import (
    DROPPED,
    NO_TOKEN,
    FeatureStats,
    feature_statistics,
    plot_activation_histogram,
    plot_density,
)
from saekit.hooks import run_until
from saekit.sae import SAEConfig, create_sae
from saekit.store import FORMAT_VERSION, ActivationStream, InMemoryStore, collect_activations

matplotlib.use("Agg")
HOOK = "blocks.3.hook_resid_post"
N = 6000
# shards of 1000 tokens and batches of 384: batches end inside shards, and windows cross both
OPTIONS = dict(batch_size=384, n_top=8, n_intervals=4, per_interval=3, context=(6, 3), bins=20, n_correlated=3)


@pytest.fixture(scope="module")
def store(default, tmp_path_factory):
    model, tokenizer = default
    path = tmp_path_factory.mktemp("store") / "s"
    return collect_activations(model, tokenizer, HOOK, N, path, context_size=64, batch_rows=8,
                               shard_bytes=1000 * 128 * 4, progress=False)


@pytest.fixture(scope="module")
def sae():
    sae = create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=48, k=6, aux_k=8, hook_name=HOOK))
    sae.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():  # two copies of latent 0: perfectly correlated, same decoder direction
        sae.W_enc[:, 1] = sae.W_enc[:, 0]
        sae.W_dec[1] = sae.W_dec[0]
        sae.b_enc[1] = sae.b_enc[0] - 1e-3  # never tied with latent 0, so TopK keeps both or neither
    return sae.eval()


@pytest.fixture(scope="module")
def stats(default, store, sae):
    model, tokenizer = default
    return feature_statistics(sae, store, model, tokenizer, n_tokens=N, **OPTIONS)


@pytest.fixture(scope="module")
def codes(store, sae):
    with torch.no_grad():
        return sae.encode(store.activations()[:N]).numpy()


def test_counts_max_and_histograms_match_brute_force(stats, codes):
    active = codes > 0
    assert stats.n_tokens == N and stats.d_sae == 48
    np.testing.assert_array_equal(stats.fires, active.sum(0))
    np.testing.assert_allclose(stats.density, active.mean(0))
    np.testing.assert_array_equal(stats.max_activation, codes.max(0))
    fired = stats.fires > 0
    assert fired.sum() > 30
    np.testing.assert_allclose(stats.mean_activation[fired], codes.sum(0)[fired] / active.sum(0)[fired], rtol=1e-5)
    for i in np.flatnonzero(fired):
        values = codes[active[:, i], i]
        edges = stats.hist_edges[i]
        assert edges[0] == 0 and edges[-1] >= values.max() and np.all(np.diff(edges) > 0)
        widths = np.diff(edges)
        assert widths.max() / widths.min() < 1.3  # equal width, up to the snapping to the fine grid
        expected = np.bincount(np.searchsorted(edges, values, side="right") - 1, minlength=len(edges) - 1)
        np.testing.assert_array_equal(stats.hist_counts[i], expected)
        bounds = stats.interval_edges[i]
        expected = np.bincount(np.searchsorted(bounds, values, side="right") - 1, minlength=len(bounds) - 1)
        np.testing.assert_array_equal(stats.interval_counts[i], expected)


def test_top_activations_are_the_largest_with_their_windows(stats, codes, store):
    tokens, left = store.tokens()[:N], stats.left
    for i in np.flatnonzero(stats.fires):
        # highest first, ties to the earlier token
        expected = np.lexsort((np.arange(N), -codes[:, i]))[:min(8, stats.fires[i])]
        np.testing.assert_array_equal(stats.top_index[i, :len(expected)], expected)
        assert np.all(stats.top_index[i, len(expected):] == -1)
        for k, index in enumerate(expected):
            assert stats.top_values[i, k, left] == codes[index, i]
            assert stats.top_tokens[i, k, left] == tokens[index]


def test_windows_hold_each_tokens_activation_and_stay_in_the_document(stats, codes, store, default):
    bos = default[1].bos_id
    docs, positions, tokens = store.documents()[:N], store.positions()[:N], store.tokens()[:N]
    where = {(d, p): j for j, (d, p) in enumerate(zip(docs, positions))}
    left, checked, gaps = stats.left, 0, 0
    examples = [(i, stats.top_index[i, k], stats.top_tokens[i, k], stats.top_values[i, k])
                for i in range(48) for k in range(8)]
    examples += [(i, stats.sample_index[i, q, s], stats.sample_tokens[i, q, s], stats.sample_values[i, q, s])
                 for i in range(48) for q in range(4) for s in range(3)]
    for latent, index, window, values in examples:
        if index < 0:
            assert np.all(window == NO_TOKEN)
            continue
        doc, pos = docs[index], positions[index]
        for slot, token in enumerate(window):
            j = where.get((doc, pos + slot - left))
            if j is not None:  # a stored token of the same document: its id and its activation
                assert token == tokens[j] and values[slot] == codes[j, latent]
                checked += 1
            elif token == DROPPED or token == bos:
                assert pos + slot - left >= 0 and values[slot] == 0
                gaps += 1
            else:
                assert token == NO_TOKEN and values[slot] == 0
    assert checked > 2000 and gaps > 0  # gaps: BOS (position 0) and chat markers the store left out


def test_interval_samples_are_distinct_tokens_inside_their_interval(stats, codes):
    for i in np.flatnonzero(stats.fires):
        seen = set()
        for q in range(4):
            lo, hi = stats.interval_edges[i, q], stats.interval_edges[i, q + 1]
            picked = [s for s in stats.sample_index[i, q] if s >= 0]
            assert len(picked) == min(3, stats.interval_counts[i, q])
            for s in picked:
                assert lo <= codes[s, i] < hi and s not in seen
                seen.add(s)


def test_same_seed_same_statistics_and_the_seed_matters(default, store, sae, stats):
    model, tokenizer = default
    again = feature_statistics(sae, store, model, tokenizer, n_tokens=N, **OPTIONS)
    np.testing.assert_array_equal(again.sample_index, stats.sample_index)
    np.testing.assert_array_equal(again.sample_values, stats.sample_values)
    np.testing.assert_array_equal(again.correlated_pearson, stats.correlated_pearson)
    other = feature_statistics(sae, store, model, tokenizer, n_tokens=N, seed=1, **OPTIONS)
    assert not np.array_equal(other.sample_index, stats.sample_index)
    np.testing.assert_array_equal(other.top_index, stats.top_index)


def test_logit_lens_correlations_and_neurons(stats, sae, default, codes):
    model, _ = default
    logits = sae.W_dec.detach() @ model.lm_head.weight.detach()[:model.config.vocab_size].T
    for i in (0, 5, 17):
        order = torch.argsort(logits[i], descending=True)
        assert set(stats.logit_top_ids[i]) == set(order[:10].tolist())
        np.testing.assert_allclose(stats.logit_top_values[i], logits[i][stats.logit_top_ids[i]], rtol=1e-5)
        assert stats.logit_bottom_values[i][0] == pytest.approx(float(logits[i].min()), rel=1e-5)
        assert stats.logit_hist_counts[i].sum() == model.config.vocab_size
    assert stats.correlation_tokens == N  # fewer tokens than correlation_tokens: all of them
    alive = np.flatnonzero(stats.fires > 0)
    pearson = np.corrcoef(codes[:, alive].T)
    np.fill_diagonal(pearson, -2)
    for row, i in enumerate(alive):
        best = np.argsort(-pearson[row], kind="stable")[:3]
        np.testing.assert_allclose(stats.correlated_pearson[i], pearson[row, best], atol=1e-4)
    assert stats.correlated_ids[0, 0] == 1 and stats.correlated_pearson[0, 0] > 0.9  # the copy of latent 0
    assert stats.decoder_cosine_ids[1, 0] == 0 and stats.decoder_cosine[1, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(stats.neuron_values[:, 0] == sae.W_dec.detach().max(1).values.numpy())


def test_concept_matches_agree_with_concept_recovery(stats, store, sae):
    recovery = concept_recovery(sae, store, HOOK, n_tokens=N)
    np.testing.assert_allclose(stats.concept_f1, recovery.f1, atol=1e-6)
    fired = stats.fires > 0
    np.testing.assert_array_equal(stats.best_concept[fired], recovery.f1.argmax(1)[fired])
    np.testing.assert_allclose(stats.best_f1[fired], recovery.f1.max(1)[fired], atol=1e-6)
    best = stats.order("concept")[0]
    assert stats.find_concept(stats.concept_names[stats.best_concept[best]])[0][0] == best


def test_windows_on_planted_documents(default):
    """Documents of 6 positions; position 0 (BOS) and 3 (a special token) are not stored."""
    model, tokenizer = default
    n_docs, kept = 40, [1, 2, 4, 5]
    docs = np.repeat(np.arange(n_docs), len(kept)).astype(np.int64)
    positions = np.tile(kept, n_docs).astype(np.int32)
    tokens = (100 + np.arange(len(docs)) % 500).astype(np.int32)
    acts = torch.zeros(len(docs), 128)
    acts[:, 0] = torch.linspace(0.1, 1.0, len(docs))  # latent 0 = ReLU(x_0): every token, rising
    manifest = {"version": FORMAT_VERSION, "hooks": {HOOK: 128}, "dtype": "float32", "labels": False,
                "source": {"kind": "planted"}, "complete": True,
                "shards": [{"name": "memory", "tokens": len(docs), "norm_sums": {HOOK: 1.0}}]}
    store = InMemoryStore(manifest, {HOOK: acts}, {"tokens": tokens, "doc": docs, "pos": positions})
    sae = create_sae(SAEConfig(architecture="relu", d_in=128, d_sae=2, hook_name=HOOK))
    with torch.no_grad():
        sae.W_enc[0, 0], sae.W_dec[0, 0] = 1.0, 1.0
        sae.W_enc[1, 1], sae.W_dec[1, 1] = 1.0, 1.0
    stats = feature_statistics(sae, store, model, tokenizer, batch_size=3, n_top=4, context=(4, 4), bins=10)
    assert stats.concept_f1 is None and stats.fires[1] == 0 and stats.top_index[1, 0] == -1
    last = len(docs) - 1  # the highest activation: position 5 of the last document
    assert stats.top_index[0, 0] == last
    window = stats.top_tokens[0, 0]  # positions 1..9
    assert window.tolist() == [tokens[last - 3], tokens[last - 2], DROPPED, tokens[last - 1], tokens[last],
                               NO_TOKEN, NO_TOKEN, NO_TOKEN, NO_TOKEN]
    np.testing.assert_allclose(stats.top_values[0, 0, [0, 1, 3, 4]], acts[[last - 3, last - 2, last - 1, last], 0])
    second = stats.top_tokens[0, 1]  # position 4 of the last document: BOS at position 0 is shown
    assert second.tolist() == [tokenizer.bos_id, tokens[last - 3], tokens[last - 2], DROPPED, tokens[last - 1],
                               tokens[last], NO_TOKEN, NO_TOKEN, NO_TOKEN]
    example = stats.examples(0)[1]
    assert example["tokens"][0] == "<|bos|>" and example["tokens"][example["centre"]] == tokenizer.token_str(
        int(tokens[last - 1]))


def test_cards_escape_text_and_the_page_is_self_contained(stats, tmp_path):
    stats = FeatureStats(**{**stats.__dict__, "token_strings": list(stats.token_strings)})
    i = int(stats.top_tokens[0, 0, stats.left]) if stats.fires[0] else int(stats.top_tokens[2, 0, stats.left])
    stats.token_strings[i] = '<script>alert("x")</script>'
    latent = 0 if stats.fires[0] else 2
    card = stats[latent]._repr_html_()
    assert "<script>" not in card and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in card
    assert f"Latent {latent}" in card and card.count('class="sk-max"') == (stats.top_index[latent] >= 0).sum() + (
        stats.sample_index[latent] >= 0).sum()
    value = stats.top_values[latent, 0, stats.left]
    assert f": {value:.4g}" in card  # the activation on hover
    path = write_feature_page(stats, [latent, 5, 1], tmp_path / "page.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('class="sk-card"') == 3
    assert not re.search(r"<script|<link|src=|url\(|@import|href=\"http", page)
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
    dead = int(np.flatnonzero(stats.fires == 0)[0])
    card = card_html(stats, dead)
    assert "never fired" in card and "(no data)" in card and 'class="sk-max"' not in card
    with pytest.raises(IndexError, match="48 latents"):
        card_html(stats, 48)
    with pytest.raises(ValueError, match="at least one"):
        write_feature_page(stats, [], tmp_path / "empty.html")


def test_save_and_load_round_trip(stats, tmp_path):
    path = stats.save(tmp_path / "stats.npz")
    loaded = FeatureStats.load(path)
    for name, value in stats.__dict__.items():
        if name in ("sae", "model", "tokenizer"):
            assert getattr(loaded, name) is None
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(loaded, name), value)
        else:
            assert getattr(loaded, name) == value
    assert card_html(loaded, 3) == card_html(stats, 3)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a saved FeatureStats"):
        FeatureStats.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="prompt_features needs"):
        loaded.prompt_features("hello")
    explorer = FeatureExplorer(loaded)
    explorer.prompt.value = "hello"
    assert "prompt_features needs the SAE" in explorer.prompt_table.value


def test_prompt_features_are_the_saes_codes(stats, default, sae):
    model, tokenizer = default
    text = "The red fox saw a blue bird."
    entries = stats.prompt_features(text, k=3)
    ids = tokenizer.encode(text, prepend_bos=True)
    with torch.no_grad():
        f = sae.encode(run_until(model, torch.tensor([ids]), [HOOK])[HOOK][0])
    assert [e["token_id"] for e in entries] == ids and entries[0]["features"] == []
    for t, entry in enumerate(entries[1:], start=1):
        top = torch.topk(f[t], 3)
        assert [i for i, _ in entry["features"]] == [int(i) for i, v in zip(top.indices, top.values) if v > 0]
    assert "fox" in prompt_html(stats, text)


def test_search_and_the_explorer(stats):
    assert search_features(stats, "7") == [(7, "latent 7")] and search_features(stats, "4800") == []
    token = stats.token_strings[int(stats.top_tokens[3, 0, stats.left])]
    found = [i for i, label in search_features(stats, token) if "peaks on" in label]
    assert 3 in found and all(token.strip().lower() in [stats.token_strings[int(t)].strip().lower()
                                                        for t in stats.top_tokens[i, :, stats.left]] for i in found)
    concept = stats.concept_names[stats.best_concept[stats.order("concept")[0]]]
    assert search_features(stats, concept)[0] == (stats.order("concept")[0], f"{stats.order('concept')[0]}: concept "
                                                  f"{concept}, F1 {stats.best_f1[stats.order('concept')[0]]:.2f}")
    explorer = FeatureExplorer(stats, sort="max")
    assert explorer.shown == int(np.argmax(stats.max_activation))
    explorer.rank.value = 2
    assert explorer.shown == stats.order("max")[2] and f"Latent {explorer.shown}<" in explorer.card.value
    explorer.sort.value = "density"
    assert explorer.shown == stats.order("density")[0]
    explorer.search.value = concept
    assert explorer.shown == stats.order("concept")[0]
    explorer.prompt.value = "A red fox"
    assert "fox" in explorer.prompt_table.value and explorer.matches.options[0][1] >= 0
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and 'class="sk-card"' in bundle["text/html"]
    with pytest.raises(ValueError, match="sort must be one of"):
        FeatureExplorer(stats, sort="alphabet")


def test_plots(stats):
    ax = plot_density(stats)
    assert len(ax.patches) == 50 and "never did" in ax.get_title()
    ax = plot_activation_histogram(stats, 0)
    assert len(ax.patches) == 20 and sum(p.get_height() for p in ax.patches) == stats.fires[0]


def test_bad_input_is_explained(default, store, sae):
    model, tokenizer = default
    wide = create_sae(SAEConfig(architecture="topk", d_in=64, d_sae=8, k=2, aux_k=4, hook_name=HOOK))
    with pytest.raises(ValueError, match="reads 64-wide activations"):
        feature_statistics(wide, store, model, tokenizer, n_tokens=100)
    with pytest.raises(ValueError, match="n_top must be positive"):
        feature_statistics(sae, store, model, tokenizer, n_tokens=100, n_top=0)
    with pytest.raises(TypeError, match="need an ActivationStore"):
        feature_statistics(sae, ActivationStream(model, tokenizer, HOOK), model, tokenizer, n_tokens=100)
    with pytest.raises(ValueError, match="pass hook="):
        feature_statistics(sae, store, model, tokenizer, n_tokens=100, hook="blocks.0.hook_resid_post")
    stats = feature_statistics(sae, store, model, tokenizer, n_tokens=500, batch_size=128)
    with pytest.raises(ValueError, match="sort by one of"):
        stats.order("name")
    with pytest.raises(TypeError, match="integer"):
        stats.card("3")


@pytest.mark.skipif(not any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                    reason="needs Chromium (apt-get install chromium)")
def test_the_page_renders_in_a_real_browser(tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "browser_check.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "features.png").stat().st_size > 10_000
