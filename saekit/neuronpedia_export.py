"""
Neuronpedia's files, written from saekit's own feature statistics.

Neuronpedia's dashboards are normally made by SAEDashboard, which runs a TransformerLens model;
nanochat is not one. saekit computes the same statistics itself (`saekit.features.feature_statistics`)
and writes them in the three shapes Neuronpedia takes:

- `write_saedashboard_batches`: what SAEDashboard's runner writes, the input of Neuronpedia's
  converter and of its hosted pipeline:

      {out}/{modelId}_{set}_{hook}_{d_sae}[_{suffix}]/batch-0.json, batch-1.json, ...

- `write_neuronpedia_export`: the bulk-import layout that Neuronpedia's admin import (and a
  self-hosted instance) reads, one JSON row per line with the keys of Neuronpedia's database rows:

      {out}/{modelId}/{sourceId}/release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl
                                features/batch-N.jsonl.gz  activations/batch-N.jsonl.gz

- `upload_features_from_stats`: `UploadFeature`s for `NeuronpediaClient.upload_features` (the
  self-serve upload, which keeps only examples, logits, density and explanations).

How saekit's statistics fill SAEDashboard's fields:

- `frac_nonzero`: the density; `freq_hist_*`: the histogram of non-zero activations (bar values
  are bin centres, heights counts; empty for a latent that never fired);
- `pos_*`/`neg_*` and `logits_hist_*`: the logit lens of the decoder direction;
- `neuron_alignment_*`: the largest decoder entries; `correlated_neurons_*`: the activation
  dimensions best correlated with the latent (Pearson; the `_l1` field holds the cosine, as in
  SAEDashboard); `correlated_features_*`: the same among latents (over all latents, where
  SAEDashboard looks only inside a batch). The export's `topkCosSim*` are the latents with the
  closest decoder directions, the latent itself first, as Neuronpedia stores them;
- `activations`: the top examples (`bin_min = -1`, `bin_max` = the max, `bin_contains = -1`), then
  the interval samples, highest interval first (`bin_min`/`bin_max` its edges, `bin_contains` the
  share of all tokens read that fall in it). An example is saekit's window around a token rather
  than a whole prompt; `qualifying_token_index` points at that token.
- saekit reads a stream of tokens, not fixed prompts: unless told otherwise, `n_prompts_total` is
  the number of tokens read and `n_tokens_in_prompt` is 1 (their product is the tokens read).

Values are rounded to 5 decimals, as SAEDashboard rounds them; densities are kept whole. The
output depends only on the arguments: activation ids are hashes, the gzip headers hold no time,
and `created_at` (default: now) is the one date in the export. A folder is written under a
temporary name and renamed into place, so a rerun never leaves stale batches behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from saekit.atomic import fresh_dir, swap_in_dir, write_bytes_atomic
from saekit.features import FeatureStats
from saekit.neuronpedia import (
    MAX_FEATURES_PER_UPLOAD,
    MAX_LOGITS,
    TOP_ACTIVATIONS_MIN,
    UploadActivation,
    UploadFeature,
    hook_layer_and_kind,
    make_source_id,
    source_set_name,
    validate_model_id,
    width_label,
)

DECIMALS = 5
BATCH_SIZE = 128  # SAEDashboard's n_features_at_a_time
CREATOR_ID_ENV = "DEFAULT_CREATOR_ID"
FALLBACK_CREATOR_ID = "clkht01d40000jv08hvalcvly"  # what Neuronpedia's converters write without one


# --------------------------------------------------------------------------- SAEDashboard's batch-N.json


def saedashboard_feature(stats: FeatureStats, latent: int, *, dataset: str = "", n_prompts: int | None = None,
                         tokens_per_prompt: int | None = None) -> dict:
    """One latent in SAEDashboard's feature shape (`NeuronpediaDashboardFeature.to_dict`)."""
    i = stats._check_latent(latent)
    for name, value in (("n_prompts", n_prompts), ("tokens_per_prompt", tokens_per_prompt)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int (or None), got {value!r}")
    fired = stats.fires[i] > 0
    hist_centres = (stats.hist_edges[i, :-1] + stats.hist_edges[i, 1:]) / 2
    logit_centres = (stats.logit_hist_edges[i, :-1] + stats.logit_hist_edges[i, 1:]) / 2
    corr_neurons = _pairs(stats.neuron_corr_ids[i], stats.neuron_corr_pearson[i], stats.neuron_corr_cosine[i])
    corr_features = _pairs(stats.correlated_ids[i], stats.correlated_pearson[i], stats.correlated_cosine[i])
    return {
        "feature_index": i,
        "neuron_alignment_indices": _ints(stats.neuron_ids[i]),
        "neuron_alignment_values": _floats(stats.neuron_values[i]),
        "neuron_alignment_l1": _floats(stats.neuron_l1[i]),
        "correlated_neurons_indices": corr_neurons[0],
        "correlated_neurons_l1": corr_neurons[2],
        "correlated_neurons_pearson": corr_neurons[1],
        "correlated_features_indices": corr_features[0],
        "correlated_features_l1": corr_features[2],
        "correlated_features_pearson": corr_features[1],
        "neg_str": [stats.token_str(int(t)) for t in stats.logit_bottom_ids[i]],
        "neg_values": _floats(stats.logit_bottom_values[i]),
        "pos_str": [stats.token_str(int(t)) for t in stats.logit_top_ids[i]],
        "pos_values": _floats(stats.logit_top_values[i]),
        "frac_nonzero": float(stats.density[i]),
        "freq_hist_data_bar_values": _floats(hist_centres) if fired else [],
        "freq_hist_data_bar_heights": _ints(stats.hist_counts[i]) if fired else [],
        "logits_hist_data_bar_heights": _ints(stats.logit_hist_counts[i]),
        "logits_hist_data_bar_values": _floats(logit_centres),
        "n_prompts_total": stats.n_tokens if n_prompts is None else n_prompts,
        "n_tokens_in_prompt": 1 if tokens_per_prompt is None else tokens_per_prompt,
        "dataset": dataset,
        "decoder_weights_dist": [],  # only for attention SAEs (DFA)
        "activations": _dashboard_examples(stats, i),
        "vector": [],  # only for SAEDashboard's steering-vector runner
    }


def saedashboard_batches(stats: FeatureStats, model_id: str, source_set: str | None = None, *,
                         suffix: str | None = None, latents: Iterable[int] | None = None,
                         batch_size: int = BATCH_SIZE, dataset: str = "", n_prompts: int | None = None,
                         tokens_per_prompt: int | None = None) -> list[dict]:
    """The latents (default: all) as SAEDashboard batch objects of `batch_size` features, by index.

    `source_set` defaults to saekit's name for the hook and width ("saekit-res-16k"); `suffix`
    makes the source "{layer}-{set}__{suffix}". `dataset`, `n_prompts` and `tokens_per_prompt`
    describe the text the statistics read (default: `n_tokens` prompts of 1 token).
    """
    layer, source_set, _ = _names(stats, model_id, source_set, suffix)
    chosen = _latents(stats, latents)
    _check_batch_size(batch_size)
    return [{"model_id": model_id, "layer": layer, "sae_set": source_set, "sae_id_suffix": suffix,
             "features": [saedashboard_feature(stats, i, dataset=dataset, n_prompts=n_prompts,
                                               tokens_per_prompt=tokens_per_prompt)
                          for i in chosen[start:start + batch_size]]}
            for start in range(0, len(chosen), batch_size)]


def write_saedashboard_batches(stats: FeatureStats, out_dir: str | os.PathLike, model_id: str,
                               source_set: str | None = None, *, suffix: str | None = None,
                               latents: Iterable[int] | None = None, batch_size: int = BATCH_SIZE,
                               dataset: str = "", n_prompts: int | None = None,
                               tokens_per_prompt: int | None = None) -> Path:
    """Write `saedashboard_batches` as SAEDashboard's runner does; returns the folder of batch-N.json files,
    `{out_dir}/{modelId}_{set}_{hook}_{d_sae}[_{suffix}]`."""
    batches = saedashboard_batches(stats, model_id, source_set, suffix=suffix, latents=latents,
                                   batch_size=batch_size, dataset=dataset, n_prompts=n_prompts,
                                   tokens_per_prompt=tokens_per_prompt)
    name = f"{model_id}_{batches[0]['sae_set']}_{stats.hook}_{stats.d_sae}" + (f"_{suffix}" if suffix else "")
    folder = Path(out_dir) / name
    tmp = fresh_dir(folder)
    for number, batch in enumerate(batches):
        (tmp / f"batch-{number}.json").write_bytes(_json(batch))
    swap_in_dir(tmp, folder)
    return folder


# --------------------------------------------------------------------------- Neuronpedia's export layout


def write_neuronpedia_export(stats: FeatureStats, out_dir: str | os.PathLike, model_id: str,
                             source_set: str | None = None, *, suffix: str | None = None,
                             latents: Iterable[int] | None = None, batch_size: int = BATCH_SIZE,
                             dataset: str = "", n_prompts: int | None = None, tokens_per_prompt: int | None = None,
                             release: str | None = None, release_description: str | None = None,
                             description: str | None = None, creator_name: str = "saekit",
                             creator_id: str | None = None, url: str | None = None, model_layers: int = 0,
                             saelens_config: Mapping | None = None, hf_repo_id: str | None = None,
                             hf_folder_id: str | None = None, created_at: datetime | str | None = None) -> Path:
    """Write the latents (default: all) in Neuronpedia's bulk-import layout; returns `{out_dir}/{modelId}/{sourceId}`.

    `release` (default: the source set's name) groups source sets on Neuronpedia; `description`
    is the source set's ("{hook} - {width}" by default). `saelens_config` (a cfg.json, as a dict)
    goes into the source row, where Neuronpedia shows it; its hook and width must be the
    statistics'. `hf_repo_id`/`hf_folder_id` say where the weights are on Hugging Face.
    `creator_id` defaults to $DEFAULT_CREATOR_ID, else the id Neuronpedia's converters use.
    `created_at` (a datetime, naive ones read as UTC, or an ISO string) dates every row; it defaults
    to now, so pass it to get the same bytes from the same statistics.
    """
    layer, source_set, source = _names(stats, model_id, source_set, suffix)
    if saelens_config is not None:
        _check_saelens_config(stats, saelens_config)
    batches = saedashboard_batches(stats, model_id, source_set, suffix=suffix, latents=latents,
                                   batch_size=batch_size, dataset=dataset, n_prompts=n_prompts,
                                   tokens_per_prompt=tokens_per_prompt)
    creator_id = creator_id or os.environ.get(CREATOR_ID_ENV) or FALLBACK_CREATOR_ID
    when = _timestamp(created_at)
    release = release or source_set
    first = batches[0]["features"][0]
    rows = {
        "release.jsonl": {
            "name": release, "description": release_description or release, "creatorName": creator_name,
            "creatorId": creator_id, "visibility": "PUBLIC", "isNewUi": False, "featured": False,
            "descriptionShort": release_description or release, "urls": [url] if url else [],
            "creatorEmail": None, "creatorNameShort": creator_name, "defaultSourceSetName": None,
            "defaultSourceId": None, "defaultUmapSourceIds": [], "createdAt": when},
        "model.jsonl": {
            "id": model_id, "instruct": False, "creatorId": creator_id, "displayNameShort": model_id,
            "displayName": model_id, "tlensId": None, "dimension": None, "visibility": "PUBLIC",
            "defaultSourceSetName": None, "defaultSourceId": None, "inferenceEnabled": False,
            "layers": model_layers, "neuronsPerLayer": 0, "createdAt": when, "owner": "", "updatedAt": when,
            "website": None},
        "sourceset.jsonl": {
            "modelId": model_id, "name": source_set, "creatorId": creator_id, "hasDashboards": True,
            "visibility": "PUBLIC", "description": description or f"{stats.hook} - {width_label(stats.d_sae)}",
            "type": "", "creatorName": creator_name, "urls": [url] if url else [], "creatorEmail": None,
            "releaseName": release, "defaultOfModelId": None, "defaultRange": 1, "defaultShowBreaks": True,
            "showDfa": False, "showCorrelated": False, "showHeadAttribution": False, "showUmap": False,
            "createdAt": when},
        "source.jsonl": {
            "id": source, "modelId": model_id, "setName": source_set, "creatorId": creator_id, "hasDashboards": True,
            "inferenceEnabled": False, "inferenceHosts": [],
            "saelensConfig": dict(saelens_config) if saelens_config is not None else None,
            "saelensRelease": None, "saelensSaeId": None, "hfRepoId": hf_repo_id, "hfFolderId": hf_folder_id,
            "visibility": "PUBLIC", "defaultOfModelId": None, "hasUmap": False, "hasUmapLogSparsity": False,
            "hasUmapClusters": False, "num_prompts": first["n_prompts_total"],
            "num_tokens_in_prompt": first["n_tokens_in_prompt"], "dataset": dataset or None, "notes": None,
            "createdAt": when},
    }
    folder = Path(out_dir) / model_id / source
    tmp = fresh_dir(folder)
    for name, row in rows.items():
        (tmp / name).write_bytes(_json(row) + b"\n")
    (tmp / "features").mkdir()
    (tmp / "activations").mkdir()
    context = {"modelId": model_id, "layer": source, "creatorId": creator_id, "createdAt": when}
    for number, batch in enumerate(batches):
        features, activations = [], []
        for feature in batch["features"]:
            features.append(_feature_row(stats, feature, context, source_set))
            activations += [_activation_row(example, feature["feature_index"], k, context)
                            for k, example in enumerate(feature["activations"])]
        _write_jsonl_gz(tmp / "features" / f"batch-{number}.jsonl.gz", features)
        _write_jsonl_gz(tmp / "activations" / f"batch-{number}.jsonl.gz", activations)
    swap_in_dir(tmp, folder)
    return folder


def _feature_row(stats: FeatureStats, feature: dict, context: dict, source_set: str) -> dict:
    """A Neuron row (neuronpedia_utils.db_models.feature.Feature) from a dashboard feature."""
    i = feature["feature_index"]
    similar_ids = [i] + _ints(stats.decoder_cosine_ids[i])
    similar_values = [1.0] + _floats(stats.decoder_cosine[i])
    return {
        "modelId": context["modelId"], "layer": context["layer"], "index": str(i), "creatorId": context["creatorId"],
        "createdAt": context["createdAt"],
        "maxActApprox": max((max(a["values"]) for a in feature["activations"]), default=0.0),
        "hasVector": False, "vector": [], "vectorLabel": None, "vectorDefaultSteerStrength": 10,
        "hookName": stats.hook, "topkCosSimIndices": similar_ids, "topkCosSimValues": similar_values,
        **{key: feature[key] for key in (
            "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
            "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
            "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
            "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
            "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
            "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist")},
        "sourceSetName": source_set,
    }


def _activation_row(example: dict, index: int, number: int, context: dict) -> dict:
    """An Activation row (neuronpedia_utils.db_models.activation.Activation) from a dashboard example."""
    values = example["values"]
    top = max(values)
    key = f"{context['modelId']}/{context['layer']}/{index}/{number}"
    return {
        "id": "c" + hashlib.sha256(key.encode()).hexdigest()[:24],  # 25 characters, like a cuid
        "tokens": example["tokens"], "index": str(index), "layer": context["layer"], "modelId": context["modelId"],
        "maxValue": top, "maxValueTokenIndex": values.index(top), "minValue": min(values), "values": values,
        "creatorId": context["creatorId"], "dataSource": None, "dataIndex": None, "dfaValues": [],
        "dfaTargetIndex": None, "dfaMaxValue": None, "createdAt": context["createdAt"], "lossValues": [],
        "logitContributions": None, "binMin": example["bin_min"], "binMax": example["bin_max"],
        "binContains": example["bin_contains"], "qualifyingTokenIndex": example["qualifying_token_index"],
        "zIndices": None, "zValues": None,
    }


# --------------------------------------------------------------------------- self-serve upload


def upload_features_from_stats(stats: FeatureStats, latents: Iterable[int] | None = None,
                               explanations: Mapping[int, str] | None = None) -> list[UploadFeature]:
    """The latents (default: every latent that fired) as `UploadFeature`s for `NeuronpediaClient.upload_features`.

    Each carries its density, logit lens (at most 20 tokens each way), top examples (the top
    group: quantile_min = -1, quantile_max = its max) and interval samples (quantile_min/max its
    edges, quantile_fraction its share of the tokens read); `explanations` maps latents to a text.
    """
    chosen = _latents(stats, latents) if latents is not None else [int(i) for i in np.flatnonzero(stats.fires > 0)]
    explanations = dict(explanations or {})
    unknown = sorted(set(explanations) - set(chosen))
    if unknown:
        raise ValueError(f"explanations for latents that are not uploaded: {unknown}")
    dead = [i for i in chosen if stats.fires[i] == 0]
    if dead:
        raise ValueError(f"latents {dead} never fired on these tokens: Neuronpedia needs at least one activation "
                         "example per feature")
    features = []
    for i in chosen:
        examples = _dashboard_examples(stats, i)
        features.append(UploadFeature(
            index=i, density=float(stats.density[i]),
            top_logits=[(stats.token_str(int(t)), v) for t, v in
                        zip(stats.logit_top_ids[i][:MAX_LOGITS], _floats(stats.logit_top_values[i][:MAX_LOGITS]))],
            bottom_logits=[(stats.token_str(int(t)), v) for t, v in
                           zip(stats.logit_bottom_ids[i][:MAX_LOGITS],
                               _floats(stats.logit_bottom_values[i][:MAX_LOGITS]))],
            explanations=[explanations[i]] if i in explanations else None,
            activations=[UploadActivation(
                tokens=e["tokens"], values=e["values"], quantile_max=e["bin_max"], quantile_min=e["bin_min"],
                quantile_fraction=None if e["bin_min"] == TOP_ACTIVATIONS_MIN else e["bin_contains"])
                for e in examples]))
    return features


# --------------------------------------------------------------------------- shared pieces


def _dashboard_examples(stats: FeatureStats, latent: int) -> list[dict]:
    """A latent's examples as SAEDashboard activations: the top group, then interval samples, highest first."""
    edges, counts = stats.interval_edges[latent], stats.interval_counts[latent]
    share = {(float(edges[q]), float(edges[q + 1])): int(counts[q]) / stats.n_tokens for q in range(len(counts))}
    top = _round(float(stats.max_activation[latent]))
    out = []
    for example in stats.examples(latent):
        if example["kind"] == "top":
            bounds = (TOP_ACTIVATIONS_MIN, top, -1)
        else:
            bounds = (_round(example["interval"][0]), _round(example["interval"][1]), share[example["interval"]])
        out.append({"bin_min": bounds[0], "bin_max": bounds[1], "bin_contains": bounds[2],
                    "tokens": example["tokens"], "values": _floats(example["values"]),
                    "qualifying_token_index": example["centre"]})
    return out


def _names(stats: FeatureStats, model_id: str, source_set: str | None, suffix: str | None) -> tuple[int, str, str]:
    """(layer, source set, source id), each checked against Neuronpedia's rules."""
    validate_model_id(model_id)
    layer, _ = hook_layer_and_kind(stats.hook)
    source_set = source_set_name(stats.hook, stats.d_sae) if source_set is None else source_set
    return layer, source_set, make_source_id(layer, source_set, suffix)  # make_source_id checks the set name


def _latents(stats: FeatureStats, latents: Iterable[int] | None) -> list[int]:
    if latents is None:
        return list(range(stats.d_sae))
    chosen = [stats._check_latent(i) for i in latents]
    if not chosen:
        raise ValueError("no latents to write: pass at least one, or None for all")
    repeated = sorted(i for i, n in Counter(chosen).items() if n > 1)
    if repeated:
        raise ValueError(f"latents {repeated} are given more than once")
    return sorted(chosen)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (SAEDashboard uses {BATCH_SIZE}; upload-batch takes "
                         f"at most {MAX_FEATURES_PER_UPLOAD}), got {batch_size!r}")


def _check_saelens_config(stats: FeatureStats, cfg: Mapping) -> None:
    metadata = cfg.get("metadata") if isinstance(cfg, Mapping) else None
    hook = metadata.get("hook_name") if isinstance(metadata, Mapping) else None
    d_sae = cfg.get("d_sae") if isinstance(cfg, Mapping) else None
    if hook != stats.hook or d_sae != stats.d_sae:
        raise ValueError(f"saelens_config describes an SAE with d_sae={d_sae} at hook {hook!r}; the statistics are of "
                         f"{stats.d_sae} latents at {stats.hook!r}")


def _timestamp(created_at: datetime | str | None) -> str:
    """An ISO date as Neuronpedia's database exports write it: 2026-01-01T00:00:00.000Z (UTC)."""
    if created_at is None:
        created_at = datetime.now(timezone.utc)
    if isinstance(created_at, str):
        try:
            created_at = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"created_at must be an ISO date like '2026-01-01T00:00:00Z', got {created_at!r}") from exc
    if not isinstance(created_at, datetime):
        raise TypeError(f"created_at must be a datetime or an ISO date string, got {type(created_at).__name__}")
    if created_at.tzinfo is not None:
        created_at = created_at.astimezone(timezone.utc)
    return created_at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created_at.microsecond // 1000:03d}Z"


def _round(x: float) -> float:
    return round(float(x), DECIMALS)


def _floats(values) -> list[float]:
    return [_round(v) for v in np.asarray(values).tolist()]


def _ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).tolist()]


def _pairs(ids, pearson, cosine) -> tuple[list[int], list[float], list[float]]:
    """Partners that exist (id >= 0, finite correlation): ids, Pearson, cosine."""
    keep = [k for k in range(len(ids)) if ids[k] >= 0 and math.isfinite(pearson[k])]
    return ([int(ids[k]) for k in keep], [_round(pearson[k]) for k in keep],
            [_round(cosine[k]) if math.isfinite(cosine[k]) else 0.0 for k in keep])


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    """One JSON row per line, gzipped with no time or name in the header (same rows, same bytes)."""
    data = b"".join(_json(row) + b"\n" for row in rows)
    write_bytes_atomic(path, gzip.compress(data, compresslevel=6, mtime=0))
