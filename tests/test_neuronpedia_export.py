"""Neuronpedia files from feature statistics: SAEDashboard's batch-N.json and Neuronpedia's export layout with
the exact keys of the real code, values that come back from the statistics, and an upload to the local fake
Neuronpedia that reads back the same feature."""

import dataclasses
import gzip
import json
from datetime import datetime, timezone

import numpy as np
import pytest
import torch

from saekit.fake_neuronpedia import FakeNeuronpedia
from saekit.features import feature_statistics
from saekit.neuronpedia import TOP_ACTIVATIONS_MIN, NeuronpediaClient, NeuronpediaNameError
from saekit.neuronpedia_export import (
    saedashboard_batches,
    saedashboard_feature,
    upload_features_from_stats,
    write_neuronpedia_export,
    write_saedashboard_batches,
)
from saekit.sae import SAEConfig, create_sae
from saekit.sae.io import saelens_config
from saekit.store import collect_activations

HOOK = "blocks.3.hook_resid_post"
N, D_SAE, DEAD = 6000, 48, 47
MODEL, SET = "nanochat-d6-tinyworld", "saekit-res-48"  # the set is saekit's default name for 48 latents at HOOK
SOURCE = f"3-{SET}"
WHEN = "2026-03-01T12:00:00Z"
KEY = "key-learner"

# SAEDashboard (sae_dashboard/neuronpedia/neuronpedia_dashboard.py): the arguments of NeuronpediaDashboardBatch,
# NeuronpediaDashboardFeature and NeuronpediaDashboardActivation, i.e. what their to_dict() writes (no DFA)
BATCH_KEYS = {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson", "correlated_features_indices",
    "correlated_features_l1", "correlated_features_pearson", "neg_str", "neg_values", "pos_str", "pos_values",
    "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt", "dataset", "activations",
    "decoder_weights_dist", "vector"}
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}
# Neuronpedia's database rows (neuronpedia_utils/db_models, as inlined in SAEDashboard's neuronpedia_export.py)
EXPORT_KEYS = {
    "release.jsonl": {"name", "description", "creatorName", "creatorId", "visibility", "isNewUi", "featured",
                      "descriptionShort", "urls", "creatorEmail", "creatorNameShort", "defaultSourceSetName",
                      "defaultSourceId", "defaultUmapSourceIds", "createdAt"},
    "model.jsonl": {"id", "instruct", "creatorId", "displayNameShort", "displayName", "tlensId", "dimension",
                    "visibility", "defaultSourceSetName", "defaultSourceId", "inferenceEnabled", "layers",
                    "neuronsPerLayer", "createdAt", "owner", "updatedAt", "website"},
    "sourceset.jsonl": {"modelId", "name", "creatorId", "hasDashboards", "visibility", "description", "type",
                        "creatorName", "urls", "creatorEmail", "releaseName", "defaultOfModelId", "defaultRange",
                        "defaultShowBreaks", "showDfa", "showCorrelated", "showHeadAttribution", "showUmap",
                        "createdAt"},
    "source.jsonl": {"id", "modelId", "setName", "creatorId", "hasDashboards", "inferenceEnabled", "inferenceHosts",
                     "saelensConfig", "saelensRelease", "saelensSaeId", "hfRepoId", "hfFolderId", "visibility",
                     "defaultOfModelId", "hasUmap", "hasUmapLogSparsity", "hasUmapClusters", "num_prompts",
                     "num_tokens_in_prompt", "dataset", "notes", "createdAt"},
}
NEURON_KEYS = {
    "modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector", "vectorLabel",
    "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices",
    "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
    "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
    "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "decoder_weights_dist", "sourceSetName"}
ACTIVATION_ROW_KEYS = {
    "id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue", "values", "creatorId",
    "dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "createdAt", "lossValues",
    "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex", "zIndices", "zValues"}


@pytest.fixture(scope="module")
def sae():
    sae = create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=D_SAE, k=6, aux_k=8, hook_name=HOOK))
    sae.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc[DEAD] = -1e3  # never among the top k: a dead latent
    return sae.eval()


@pytest.fixture(scope="module")
def store(default):
    model, tokenizer = default
    return collect_activations(model, tokenizer, HOOK, N, None, context_size=64, progress=False)


@pytest.fixture(scope="module")
def stats(default, store, sae):
    model, tokenizer = default
    return feature_statistics(sae, store, model, tokenizer, n_tokens=N, batch_size=512, n_top=6, n_intervals=4,
                              per_interval=3, context=(6, 3), bins=16, n_correlated=3)


@pytest.fixture(scope="module")
def codes(store, sae):
    with torch.no_grad():
        return sae.encode(store.activations()[:N]).numpy()


def read_jsonl_gz(path):
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()]


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- batch-N.json


def test_saedashboard_batches_have_saedashboards_keys(stats, tmp_path):
    batches = saedashboard_batches(stats, MODEL, batch_size=20, dataset="tinyworld")
    assert [len(b["features"]) for b in batches] == [20, 20, 8]
    assert [f["feature_index"] for b in batches for f in b["features"]] == list(range(D_SAE))
    for batch in batches:
        assert set(batch) == BATCH_KEYS
        assert (batch["model_id"], batch["layer"], batch["sae_set"], batch["sae_id_suffix"]) == (MODEL, 3, SET, None)
        for feature in batch["features"]:
            assert set(feature) == FEATURE_KEYS
            assert all(set(a) == ACTIVATION_KEYS for a in feature["activations"])
            assert (feature["dataset"], feature["n_prompts_total"], feature["n_tokens_in_prompt"]) == (
                "tinyworld", N, 1)

    folder = write_saedashboard_batches(stats, tmp_path, MODEL, batch_size=20, dataset="tinyworld")
    assert folder == tmp_path / f"{MODEL}_{SET}_{HOOK}_{D_SAE}"
    assert files(folder) == ["batch-0.json", "batch-1.json", "batch-2.json"]
    assert [json.loads((folder / f"batch-{k}.json").read_text()) for k in range(3)] == batches
    assert files(tmp_path) == [f"{folder.name}/batch-{k}.json" for k in range(3)]  # no temporary left behind


def test_dashboard_values_come_from_the_statistics(stats, sae, codes):
    alive = [i for i in range(D_SAE) if (codes[:, i] > 0).any()]
    assert len(alive) > 40 and DEAD not in alive
    for i in alive[::5]:
        f = saedashboard_feature(stats, i)
        assert f["feature_index"] == i and f["frac_nonzero"] == (codes[:, i] > 0).mean()
        assert f["pos_str"] == [stats.token_strings[t] for t in stats.logit_top_ids[i]]
        assert f["neg_str"] == [stats.token_strings[t] for t in stats.logit_bottom_ids[i]]
        np.testing.assert_allclose(f["pos_values"], stats.logit_top_values[i], atol=1e-5)
        np.testing.assert_allclose(f["neg_values"], stats.logit_bottom_values[i], atol=1e-5)
        assert f["freq_hist_data_bar_heights"] == stats.hist_counts[i].tolist()
        assert sum(f["freq_hist_data_bar_heights"]) == (codes[:, i] > 0).sum()
        edges = stats.hist_edges[i]
        assert all(lo - 1e-5 <= c <= hi + 1e-5 for lo, c, hi in zip(edges, f["freq_hist_data_bar_values"], edges[1:]))
        assert sum(f["logits_hist_data_bar_heights"]) == len(stats.token_strings)
        assert f["neuron_alignment_indices"] == stats.neuron_ids[i].tolist()
        np.testing.assert_allclose(f["neuron_alignment_values"], stats.neuron_values[i], atol=1e-5)
        assert f["neuron_alignment_indices"][0] == int(sae.W_dec[i].argmax())
        assert f["correlated_features_indices"] == [int(j) for j in stats.correlated_ids[i] if j >= 0]
        np.testing.assert_allclose(f["correlated_features_pearson"],
                                   stats.correlated_pearson[i][stats.correlated_ids[i] >= 0], atol=1e-5)
        np.testing.assert_allclose(f["correlated_neurons_l1"], stats.neuron_corr_cosine[i], atol=1e-5)  # the cosine

        examples = stats.examples(i)
        assert len(f["activations"]) == len(examples) > 0
        for got, example in zip(f["activations"], examples):
            assert got["tokens"] == example["tokens"] and got["qualifying_token_index"] == example["centre"]
            np.testing.assert_allclose(got["values"], example["values"], atol=1e-5)
            if example["kind"] == "top":
                assert (got["bin_min"], got["bin_contains"]) == (TOP_ACTIVATIONS_MIN, -1)
                assert got["bin_max"] == pytest.approx(codes[:, i].max(), abs=1e-5)
            else:
                lo, hi = example["interval"]
                assert (got["bin_min"], got["bin_max"]) == (pytest.approx(lo, abs=1e-5), pytest.approx(hi, abs=1e-5))
                assert lo - 1e-5 <= got["values"][got["qualifying_token_index"]] <= hi + 1e-5
                in_interval = ((codes[:, i] >= lo) & (codes[:, i] < hi) & (codes[:, i] > 0)).sum()
                assert got["bin_contains"] * N == pytest.approx(in_interval, abs=1)
        first = f["activations"][0]
        assert first["values"][first["qualifying_token_index"]] == pytest.approx(codes[:, i].max(), abs=1e-5)
        contains = [a["bin_contains"] for a in f["activations"] if a["bin_min"] != TOP_ACTIVATIONS_MIN]
        highs = [a["bin_max"] for a in f["activations"] if a["bin_min"] != TOP_ACTIVATIONS_MIN]
        assert highs == sorted(highs, reverse=True) and all(0 < c <= 1 for c in contains)  # highest interval first

    dead = saedashboard_feature(stats, DEAD)
    assert dead["frac_nonzero"] == 0 and dead["activations"] == []
    assert dead["freq_hist_data_bar_values"] == dead["freq_hist_data_bar_heights"] == []  # as SAEDashboard


# --------------------------------------------------------------------------- the export layout


def test_export_layout_has_neuronpedias_rows(stats, sae, tmp_path):
    cfg = saelens_config(sae)
    folder = write_neuronpedia_export(stats, tmp_path, MODEL, batch_size=20, dataset="tinyworld", created_at=WHEN,
                                      saelens_config=cfg, model_layers=6, hf_repo_id="someone/saes",
                                      hf_folder_id="layer_3")
    assert folder == tmp_path / MODEL / SOURCE
    assert files(folder) == ["activations/batch-0.jsonl.gz", "activations/batch-1.jsonl.gz",
                             "activations/batch-2.jsonl.gz", "features/batch-0.jsonl.gz", "features/batch-1.jsonl.gz",
                             "features/batch-2.jsonl.gz", "model.jsonl", "release.jsonl", "source.jsonl",
                             "sourceset.jsonl"]
    assert files(tmp_path) == [f"{MODEL}/{SOURCE}/{name}" for name in files(folder)]
    rows = {}
    for name, keys in EXPORT_KEYS.items():
        lines = (folder / name).read_text().splitlines()
        assert len(lines) == 1
        rows[name] = json.loads(lines[0])
        assert set(rows[name]) == keys, name
        assert datetime.fromisoformat(rows[name]["createdAt"].replace("Z", "+00:00")) == datetime(
            2026, 3, 1, 12, tzinfo=timezone.utc)
    source, source_set = rows["source.jsonl"], rows["sourceset.jsonl"]
    assert (source["id"], source["modelId"], source["setName"]) == (SOURCE, MODEL, SET)
    assert source["saelensConfig"] == json.loads(json.dumps(cfg))
    assert (source["num_prompts"], source["num_tokens_in_prompt"], source["dataset"]) == (N, 1, "tinyworld")
    assert (source["hfRepoId"], source["hfFolderId"]) == ("someone/saes", "layer_3")
    assert (source_set["name"], source_set["releaseName"]) == (SET, rows["release.jsonl"]["name"])
    assert (rows["model.jsonl"]["id"], rows["model.jsonl"]["layers"]) == (MODEL, 6)

    features = [row for k in range(3) for row in read_jsonl_gz(folder / "features" / f"batch-{k}.jsonl.gz")]
    activations = [row for k in range(3) for row in read_jsonl_gz(folder / "activations" / f"batch-{k}.jsonl.gz")]
    assert all(set(row) == NEURON_KEYS for row in features)
    assert all(set(row) == ACTIVATION_ROW_KEYS for row in activations)
    assert [row["index"] for row in features] == [str(i) for i in range(D_SAE)]  # the text column's form
    assert {(row["modelId"], row["layer"], row["sourceSetName"], row["hookName"]) for row in features} == {
        (MODEL, SOURCE, SET, HOOK)}
    ids = [row["id"] for row in activations]
    assert len(set(ids)) == len(ids) and all(len(i) == 25 for i in ids)
    by_feature = {row["index"]: [] for row in features}
    for row in activations:
        assert (row["modelId"], row["layer"]) == (MODEL, SOURCE)
        assert row["maxValue"] == max(row["values"]) == row["values"][row["maxValueTokenIndex"]]
        assert row["minValue"] == min(row["values"]) and len(row["tokens"]) == len(row["values"])
        by_feature[row["index"]].append(row)
    for row in features:
        i = int(row["index"])
        dashboard = saedashboard_feature(stats, i, dataset="tinyworld")
        assert {key: row[key] for key in NEURON_KEYS & FEATURE_KEYS} == {key: dashboard[key]
                                                                          for key in NEURON_KEYS & FEATURE_KEYS}
        assert row["maxActApprox"] == pytest.approx(float(stats.max_activation[i]), abs=1e-5)
        assert row["topkCosSimIndices"][0] == i and row["topkCosSimIndices"][1:] == stats.decoder_cosine_ids[i].tolist()
        mine = by_feature[row["index"]]
        assert [(a["binMin"], a["binMax"], a["binContains"], a["qualifyingTokenIndex"], a["tokens"]) for a in mine] == [
            (a["bin_min"], a["bin_max"], a["bin_contains"], a["qualifying_token_index"], a["tokens"])
            for a in dashboard["activations"]]
    assert features[DEAD]["maxActApprox"] == 0 and by_feature[str(DEAD)] == []


def test_export_is_deterministic_gzipped_and_replaced_whole(stats, tmp_path):
    first = write_neuronpedia_export(stats, tmp_path / "a", MODEL, batch_size=20, created_at=WHEN)
    second = write_neuronpedia_export(stats, tmp_path / "b", MODEL, batch_size=20,
                                      created_at=datetime(2026, 3, 1, 12, tzinfo=timezone.utc))
    assert files(first) == files(second)
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in files(first))
    for name in files(first):
        if name.endswith(".gz"):
            raw = (first / name).read_bytes()
            assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, with no time in its header
            assert gzip.decompress(raw).endswith(b"\n")
    again = write_neuronpedia_export(stats, tmp_path / "a", MODEL, latents=[3, 1, 2], created_at=WHEN)
    assert again == first
    assert files(first) == ["activations/batch-0.jsonl.gz", "features/batch-0.jsonl.gz", "model.jsonl",
                            "release.jsonl", "source.jsonl", "sourceset.jsonl"]  # the old batches are gone
    assert [r["index"] for r in read_jsonl_gz(first / "features" / "batch-0.jsonl.gz")] == ["1", "2", "3"]
    assert sorted(p.name for p in (tmp_path / "a" / MODEL).iterdir()) == [SOURCE]


def test_names_and_arguments_are_checked(stats, sae, tmp_path):
    for call in (lambda: saedashboard_batches(stats, "Nanochat-D6"),
                 lambda: saedashboard_batches(stats, MODEL, "saekit_res"),
                 lambda: write_neuronpedia_export(stats, tmp_path, MODEL, suffix="L0 32"),
                 lambda: saedashboard_batches(dataclasses.replace(stats, hook="blocks.3.attn.hook_z"), MODEL)):
        with pytest.raises(NeuronpediaNameError):
            call()
    with pytest.raises(IndexError, match="out of range"):
        saedashboard_batches(stats, MODEL, latents=[D_SAE])
    with pytest.raises(ValueError, match="more than once"):
        saedashboard_batches(stats, MODEL, latents=[1, 1])
    with pytest.raises(ValueError, match="batch_size"):
        saedashboard_batches(stats, MODEL, batch_size=0)
    with pytest.raises(ValueError, match="tokens_per_prompt"):
        saedashboard_batches(stats, MODEL, tokens_per_prompt=0)
    prompts = saedashboard_batches(stats, MODEL, latents=[0], n_prompts=100, tokens_per_prompt=60)[0]["features"][0]
    assert (prompts["n_prompts_total"], prompts["n_tokens_in_prompt"]) == (100, 60)
    with pytest.raises(ValueError, match="ISO date"):
        write_neuronpedia_export(stats, tmp_path, MODEL, created_at="yesterday")
    other = saelens_config(create_sae(SAEConfig(architecture="topk", d_in=128, d_sae=64, k=6, hook_name=HOOK)))
    with pytest.raises(ValueError, match="d_sae=64"):
        write_neuronpedia_export(stats, tmp_path, MODEL, saelens_config=other)
    assert list(tmp_path.iterdir()) == []  # nothing written by a refused export
    with_suffix = saedashboard_batches(stats, MODEL, "saekit-res-l0", suffix="k6", latents=[0])
    assert (with_suffix[0]["sae_set"], with_suffix[0]["sae_id_suffix"]) == ("saekit-res-l0", "k6")
    folder = write_neuronpedia_export(stats, tmp_path, MODEL, "saekit-res-l0", suffix="k6", latents=[0])
    assert folder.name == "3-saekit-res-l0__k6"


# --------------------------------------------------------------------------- upload


def test_upload_features_match_the_dashboard(stats, codes):
    features = upload_features_from_stats(stats, explanations={4: "digits"})
    assert [f.index for f in features] == [i for i in range(D_SAE) if (codes[:, i] > 0).any()]  # dead ones: nothing
    for feature in features:
        dashboard = saedashboard_feature(stats, feature.index)
        assert feature.density == dashboard["frac_nonzero"]
        assert feature.top_logits == list(zip(dashboard["pos_str"], dashboard["pos_values"]))
        assert feature.bottom_logits == list(zip(dashboard["neg_str"], dashboard["neg_values"]))
        assert [(a.tokens, a.values, a.quantile_min, a.quantile_max) for a in feature.activations] == [
            (a["tokens"], a["values"], a["bin_min"], a["bin_max"]) for a in dashboard["activations"]]
        assert [a.quantile_fraction for a in feature.activations] == [
            None if a["bin_min"] == TOP_ACTIVATIONS_MIN else a["bin_contains"] for a in dashboard["activations"]]
        assert feature.explanations == (["digits"] if feature.index == 4 else None)
    with pytest.raises(ValueError, match="never fired"):
        upload_features_from_stats(stats, latents=[0, DEAD])
    with pytest.raises(ValueError, match="not uploaded"):
        upload_features_from_stats(stats, latents=[0], explanations={1: "x"})


def test_upload_to_the_fake_server_and_read_back(stats, tmp_path):
    features = upload_features_from_stats(stats)
    with FakeNeuronpedia(users={KEY: "learner"}) as server:
        client = NeuronpediaClient(server.base_url, api_key=KEY, backoff=0)
        client.create_model(MODEL, 6)
        client.create_source_set(MODEL, SET)
        assert client.upload_features(MODEL, SOURCE, features, chunk_size=20) == len(features)
        export = write_neuronpedia_export(stats, tmp_path, MODEL, latents=[5], created_at=WHEN)
        exported = read_jsonl_gz(export / "features" / "batch-0.jsonl.gz")[0]
        for i in (0, 5, 30):
            got = client.get_feature(MODEL, SOURCE, i)
            dashboard = saedashboard_feature(stats, i)
            assert (got["index"], got["layer"], got["sourceSetName"]) == (str(i), SOURCE, SET)
            assert got["frac_nonzero"] == dashboard["frac_nonzero"] == stats.density[i]
            assert (got["pos_str"], got["pos_values"]) == (dashboard["pos_str"], dashboard["pos_values"])
            assert (got["neg_str"], got["neg_values"]) == (dashboard["neg_str"], dashboard["neg_values"])
            assert got["maxActApprox"] == pytest.approx(float(stats.max_activation[i]), abs=1e-5)
            top = got["activations"][0]  # largest first
            assert (top["binMin"], top["binContains"]) == (TOP_ACTIVATIONS_MIN, None)
            assert top["tokens"] == dashboard["activations"][0]["tokens"]
            assert top["values"] == dashboard["activations"][0]["values"]
            assert top["maxValueTokenIndex"] == dashboard["activations"][0]["qualifying_token_index"]
            served = sorted((a["binMin"], a["binMax"], a["binContains"] or -1, a["tokens"]) for a in got["activations"])
            assert served == sorted((a["bin_min"], a["bin_max"], a["bin_contains"], a["tokens"])
                                    for a in dashboard["activations"])
        assert set(exported) <= set(client.get_feature(MODEL, SOURCE, 5))  # the export's Neuron row, as served
