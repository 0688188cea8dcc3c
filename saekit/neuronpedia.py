"""
Neuronpedia: its naming rules, upload payloads, and a small client for its public REST API.

Neuronpedia (neuronpedia.org) shows feature dashboards. It cannot run a nanochat model, so saekit
computes the dashboards itself and sends them through the self-serve routes, which need an API key
(Settings on neuronpedia.org):

    POST /api/model/new             {id, layers}          a model, UNLISTED (5 per hour)
    POST /api/source-set/new        {modelId, name}       a source set with sources "0-name" .. "{layers-1}-name"
    POST /api/feature/upload-batch  {modelId, source, features}   at most 128 features per call
    GET  /api/feature/{modelId}/{source}/{index}          a feature with its activations and explanations

Names. A model id is lowercase, like `nanochat-d20`; a source set is `[family]-[hook]-[width]`, like
`saekit-res-16k`; a source (one SAE, called `layer` in the API) is `{layer}-{source set}`, like
`12-saekit-res-16k`; a feature is `{modelId}/{source}/{index}`. `validate_*` check the rules the
server enforces, so a bad name fails here with the reason instead of there.

Uploads. `UploadFeature`s become upload-batch payloads (`upload_batch_payloads`), checked against
the server's schema first: Neuronpedia answers some mistakes (an unknown source, tokens and values
of different lengths, a repeated index) with an opaque 500. `NeuronpediaClient.upload_features`
sends them 128 at a time and never retries one: the server stores activations again on every
upload, so a repeated upload duplicates them. If a batch fails after others went through,
`NeuronpediaUploadInterrupted` says which indexes are on the server.

Errors. Each HTTP status has its own exception, with the server's message (its `error` field, else
`message`, else the text). 429 (a per-IP, 60-minute window with no Retry-After) is never retried;
reads are retried on connection errors and 502/503/504 with exponential backoff. The client uses
only the standard library and prints nothing.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
API_KEY_ENV = "NEURONPEDIA_API_KEY"
MAX_FEATURES_PER_UPLOAD = 128
MAX_TOKENS = 1024
MAX_LOGITS = 20
MAX_EXPLANATION_CHARS = 512
MAX_FEATURE_INDEX = 10_000_000
MAX_QUANTILE = 99_999_999
TOP_ACTIVATIONS_MIN = -1  # quantileMin of the "top activations" group (SAEDashboard's bin_min = -1)
MODEL_ID_RE = re.compile(r"^[a-z][a-z0-9.-]*[a-z0-9]$")
SOURCE_SET_RE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z0-9]$")
SUFFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# saekit's hook kinds in source-set names; Neuronpedia's own sets use `res` for the residual stream
HOOK_ABBREVIATIONS = {"hook_resid_post": "res", "hook_resid_pre": "respre", "hook_attn_out": "attout",
                      "hook_mlp_out": "mlp", "mlp.hook_post": "mlppost"}
RETRIED_STATUSES = (502, 503, 504)


# --------------------------------------------------------------------------- names


class NeuronpediaNameError(ValueError):
    """A model id, source-set name or source id that Neuronpedia would refuse."""


def validate_model_id(model_id: str) -> str:
    """`model_id` if Neuronpedia accepts it for a new model: 2-32 of a-z 0-9 . -, starting with a letter,
    not ending with . or -, no '--' or '..'."""
    problems = _problems(model_id, "model id", MODEL_ID_RE, "lowercase letters, digits, '.' and '-', starting with "
                         "a letter and not ending with '.' or '-'")
    if isinstance(model_id, str):
        if not 2 <= len(model_id) <= 32:
            problems.append(f"it must be 2 to 32 characters long, not {len(model_id)}")
        if ".." in model_id:
            problems.append("it must not contain '..'")
    return _named(model_id, "model id", problems)


def validate_source_set_name(name: str) -> str:
    """`name` if Neuronpedia accepts it for a new source set: a-z 0-9 -, starting with a letter (or a single
    character), not ending with '-', no '--', not 'neurons'."""
    problems = _problems(name, "source-set name", SOURCE_SET_RE, "lowercase letters, digits and '-', starting with "
                         "a letter and not ending with '-'")
    if name == "neurons":
        problems.append("'neurons' is reserved for a model's raw MLP neurons")
    return _named(name, "source-set name", problems)


class SourceId(NamedTuple):
    layer: int
    source_set: str
    suffix: str | None  # variants of one set on one layer: "{layer}-{set}__{suffix}"


def make_source_id(layer: int, source_set: str, suffix: str | None = None) -> str:
    """"{layer}-{source_set}" (with "__{suffix}" if given). Self-serve source sets only have sources without a
    suffix: "0-{set}" .. "{layers-1}-{set}"."""
    if not _is_int(layer) or layer < 0:
        raise NeuronpediaNameError(f"a source's layer must be a non-negative int, got {layer!r}")
    validate_source_set_name(source_set)
    if suffix is None:
        return f"{layer}-{source_set}"
    if not isinstance(suffix, str) or not SUFFIX_RE.match(suffix):
        raise NeuronpediaNameError(f"a source suffix must be lowercase letters, digits and '-', got {suffix!r}")
    return f"{layer}-{source_set}__{suffix}"


def parse_source_id(source: str) -> SourceId:
    """The layer, source set and suffix of a source id like "12-saekit-res-16k" (Neuronpedia's own reading:
    the layer is before the first '-', the set after it up to '__')."""
    match = re.fullmatch(r"(\d+)-(.+?)(?:__(.+))?", source) if isinstance(source, str) else None
    if match is None:
        raise NeuronpediaNameError(f"expected a source id like '12-saekit-res-16k' ('{{layer}}-{{source set}}'), "
                                   f"got {source!r}")
    layer, source_set, suffix = match.groups()
    validate_source_set_name(source_set)
    if suffix is not None and not SUFFIX_RE.match(suffix):
        raise NeuronpediaNameError(f"{source!r}: the suffix after '__' must be lowercase letters, digits and '-'")
    return SourceId(int(layer), source_set, suffix)


def validate_source_id(source: str) -> str:
    """`source` if it is a well-formed source id ("{layer}-{source set}[__{suffix}]")."""
    parse_source_id(source)
    return source


def nanochat_model_id(depth: int, variant: str | None = None) -> str:
    """The model id for a nanochat of `depth` layers: "nanochat-d20", or "nanochat-d20-sft" with a variant."""
    if not _is_int(depth) or depth < 1:
        raise NeuronpediaNameError(f"a nanochat depth must be a positive int, got {depth!r}")
    return validate_model_id(f"nanochat-d{depth}" + (f"-{variant}" if variant else ""))


def width_label(d_sae: int) -> str:
    """Neuronpedia's width label: 16384 -> "16k", 1048576 -> "1m", 512 -> "512" (thousands, rounded down)."""
    if d_sae >= 1_000_000:
        return f"{d_sae // 1_000_000}m"
    return f"{d_sae // 1000}k" if d_sae >= 1000 else str(d_sae)


def hook_layer_and_kind(hook_name: str) -> tuple[int, str]:
    """(3, "hook_resid_post") for "blocks.3.hook_resid_post"."""
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_name) if isinstance(hook_name, str) else None
    if match is None or match.group(2) not in HOOK_ABBREVIATIONS:
        raise NeuronpediaNameError(f"expected a hook name 'blocks.{{layer}}.{{kind}}' with kind one of "
                                   f"{sorted(HOOK_ABBREVIATIONS)}, got {hook_name!r}")
    return int(match.group(1)), match.group(2)


def source_set_name(hook_name: str, d_sae: int, family: str = "saekit") -> str:
    """"{family}-{hook}-{width}", e.g. "saekit-res-16k" for a 16384-latent SAE on blocks.*.hook_resid_post."""
    if not _is_int(d_sae) or d_sae < 1:
        raise NeuronpediaNameError(f"d_sae must be a positive int, got {d_sae!r}")
    _, kind = hook_layer_and_kind(hook_name)
    return validate_source_set_name(f"{family}-{HOOK_ABBREVIATIONS[kind]}-{width_label(d_sae)}")


def source_id(hook_name: str, d_sae: int, family: str = "saekit", suffix: str | None = None) -> str:
    """The source id of an SAE at `hook_name`, e.g. "12-saekit-res-16k" for blocks.12.hook_resid_post."""
    layer, _ = hook_layer_and_kind(hook_name)
    return make_source_id(layer, source_set_name(hook_name, d_sae, family), suffix)


def neuronpedia_id(model_id: str, source: str) -> str:
    """"{modelId}/{source}": what SAELens keeps in cfg.json's metadata.neuronpedia_id."""
    return f"{validate_model_id(model_id)}/{validate_source_id(source)}"


def feature_url(model_id: str, source: str, index: int, base_url: str = DEFAULT_BASE_URL) -> str:
    """The page of one feature: {base}/{modelId}/{source}/{index}."""
    parts = (urllib.parse.quote(str(part), safe="") for part in (model_id, source, index))
    return f"{_normalized_base(base_url)}/" + "/".join(parts)


def _problems(value, what: str, pattern: re.Pattern, rule: str) -> list[str]:
    if not isinstance(value, str):
        return [f"a {what} must be a str, got {type(value).__name__}"]
    problems = [] if pattern.match(value) else [f"it must be {rule}"]
    if "--" in value:
        problems.append("it must not contain '--'")
    return problems


def _named(value, what: str, problems: list[str]) -> str:
    if problems:
        raise NeuronpediaNameError(f"{value!r} is not a valid Neuronpedia {what}: " + "; ".join(problems))
    return value


# --------------------------------------------------------------------------- upload payloads


class NeuronpediaPayloadError(ValueError):
    """An upload-batch payload the server would refuse. `path` names the field, as the server's errors do
    ("features[3].activations[0].tokens[2]"); `server_status` is how the server would answer: 400 (its
    schema) or 500 (checks it makes later and reports only as 'something went wrong')."""

    def __init__(self, message: str, path: str, server_status: int):
        super().__init__(f"{path}: {message}" if path else message)
        self.message, self.path, self.server_status = message, path, server_status


@dataclass
class UploadActivation:
    """One activation example: the tokens of a context and the feature's activation on each.

    Quantiles place the example in a dashboard group: an interval group has quantile_min/max (its
    bounds) and quantile_fraction (the share of all activations inside it); the top-activations
    group is quantile_min=TOP_ACTIVATIONS_MIN, quantile_max=the feature's largest activation,
    quantile_fraction=None.
    """

    tokens: list[str]
    values: list[float]
    quantile_max: float | None = None
    quantile_min: float | None = None
    quantile_fraction: float | None = None

    def to_json(self) -> dict:
        out = {"tokens": list(self.tokens), "values": [_plain(v) for v in self.values]}
        for key, value in (("quantileMax", self.quantile_max), ("quantileMin", self.quantile_min),
                           ("quantileFraction", self.quantile_fraction)):
            if value is not None:
                out[key] = _plain(value)
        return out


@dataclass
class UploadFeature:
    """One latent's dashboard as upload-batch takes it. `density` is the fraction of tokens it fires on;
    logits are (token, value) pairs, at most 20 each; explanations are plain texts."""

    index: int
    activations: list[UploadActivation]
    density: float | None = None
    top_logits: list[tuple[str, float]] | None = None
    bottom_logits: list[tuple[str, float]] | None = None
    explanations: list[str] | None = None

    def to_json(self) -> dict:
        # the server takes a missing density or explanation list but refuses null for them
        out: dict[str, Any] = {"index": _plain(self.index, integer=True),
                               "activations": [a.to_json() for a in self.activations]}
        if self.density is not None:
            out["density"] = _plain(self.density)
        for key, logits in (("topLogits", self.top_logits), ("bottomLogits", self.bottom_logits)):
            if logits is not None:
                out[key] = [{"token": token, "value": _plain(value)} for token, value in logits]
        if self.explanations is not None:
            out["explanations"] = [{"text": text} for text in self.explanations]
        return out


def _plain(value, integer: bool = False):
    """A Python int or float for numpy and torch scalars too (JSON knows no others); anything else is left as it
    is, for the checks to name."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if integer and number.is_integer() else number


def upload_batch_payloads(model_id: str, source: str, features: Iterable[UploadFeature],
                          chunk_size: int = MAX_FEATURES_PER_UPLOAD) -> list[dict]:
    """The upload-batch request bodies for `features`, `chunk_size` (at most 128) per body.

    Every body is checked before any is returned, so a bad feature anywhere stops the whole upload
    before it starts; indexes must also be unique across bodies.
    """
    if not _is_int(chunk_size) or not 1 <= chunk_size <= MAX_FEATURES_PER_UPLOAD:
        raise ValueError(f"chunk_size must be an int in 1..{MAX_FEATURES_PER_UPLOAD}, got {chunk_size!r}")
    validate_model_id(model_id)
    validate_source_id(source)
    wire = [feature.to_json() for feature in features]
    if not wire:
        raise NeuronpediaPayloadError("there are no features to upload", "features", 400)
    payloads = [{"modelId": model_id, "source": source, "features": wire[start:start + chunk_size]}
                for start in range(0, len(wire), chunk_size)]
    for number, payload in enumerate(payloads):
        try:
            validate_upload_batch(payload)
        except NeuronpediaPayloadError as exc:  # name the feature by its place in `features`, not in the chunk
            def place(match: re.Match) -> str:
                return f"features[{number * chunk_size + int(match.group(1))}]"
            raise NeuronpediaPayloadError(re.sub(r"\bfeatures\[(\d+)\]", place, exc.message),
                                          re.sub(r"\bfeatures\[(\d+)\]", place, exc.path), exc.server_status) from None
    first_place: dict[int, int] = {}
    for position, feature in enumerate(wire):  # unique within each body is checked above; now across bodies
        earlier = first_place.setdefault(feature["index"], position)
        if earlier != position:
            raise NeuronpediaPayloadError(f"index {feature['index']} is also features[{earlier}]'s; every index "
                                          "must be unique", f"features[{position}].index", 500)
    return payloads


def validate_upload_batch(payload: dict) -> None:
    """Raise `NeuronpediaPayloadError` unless Neuronpedia would accept `payload` (one upload-batch body)."""
    error = upload_schema_error(payload) or upload_content_error(payload)
    if error is not None:
        raise error


def upload_schema_error(payload: Any) -> NeuronpediaPayloadError | None:
    """The first way `payload` breaks upload-batch's schema (the server's 400 {error, path}), or None.
    Messages follow the server's validator ("features[0].density must be less than or equal to 1")."""
    try:
        _check_schema(payload)
    except NeuronpediaPayloadError as exc:
        return exc
    return None


def upload_content_error(payload: dict) -> NeuronpediaPayloadError | None:
    """What the server checks after its schema and answers with an opaque 500: tokens and values of
    different lengths, repeated indexes. Also numbers JSON cannot carry (NaN, infinity)."""
    features = payload["features"]
    for i, feature in enumerate(features):
        for j, activation in enumerate(feature["activations"]):
            tokens, values = activation["tokens"], activation["values"]
            if len(tokens) != len(values):
                return NeuronpediaPayloadError(f"{len(tokens)} tokens but {len(values)} values; they must match",
                                               f"features[{i}].activations[{j}]", 500)
    indexes = [feature["index"] for feature in features]
    if len(set(indexes)) != len(indexes):
        repeated = sorted({index for index in indexes if indexes.count(index) > 1})
        return NeuronpediaPayloadError(f"indexes {repeated} appear more than once; every index must be unique",
                                       "features", 500)
    for path, number in _numbers(payload):
        if not math.isfinite(number):
            return NeuronpediaPayloadError(f"{number} cannot be sent as JSON", path, 500)
    return None


def _numbers(payload: dict) -> Iterable[tuple[str, float]]:
    for i, feature in enumerate(payload["features"]):
        here = f"features[{i}]"
        if "density" in feature:
            yield f"{here}.density", feature["density"]
        for key in ("topLogits", "bottomLogits"):
            for j, logit in enumerate(feature.get(key) or []):
                yield f"{here}.{key}[{j}].value", logit["value"]
        for j, activation in enumerate(feature["activations"]):
            for k, value in enumerate(activation["values"]):
                yield f"{here}.activations[{j}].values[{k}]", value
            for key in ("quantileMax", "quantileMin", "quantileFraction"):
                if activation.get(key) is not None:
                    yield f"{here}.activations[{j}].{key}", activation[key]


def _fail(path: str, message: str) -> None:
    raise NeuronpediaPayloadError(message, path, 400)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value) -> str:
    return json.dumps(value, default=repr)


def _is_number(value) -> bool:  # the server's validator calls NaN "not a number" too
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


_MISSING = object()


def _check_number(value, where: str, *, required=False, nullable=False, integer=False,
                  low: float | None = None, high: float | None = None) -> None:
    if value is _MISSING or (value is None and nullable):
        if required:
            _fail(where, f"{where} is a required field")
        return
    if not _is_number(value):
        _fail(where, f"{where} must be a `number` type, but the final value was: `{_shown(value)}`.")
    if integer and not (math.isfinite(value) and value == int(value)):
        _fail(where, f"{where} must be an integer")
    if low is not None and value < low:
        _fail(where, f"{where} must be greater than or equal to {low}")
    if high is not None and value > high:
        _fail(where, f"{where} must be less than or equal to {high}")


def _check_string(value, where: str, *, low: int = 1, high: int | None = None) -> None:
    # the server's `string().required()` refuses "" as missing
    if value is None or value == "":
        _fail(where, f"{where} is a required field")
    if not isinstance(value, str):
        _fail(where, f"{where} must be a `string` type, but the final value was: `{_shown(value)}`.")
    if len(value) < low:
        _fail(where, f"{where} must be at least {low} characters")
    if high is not None and len(value) > high:
        _fail(where, f"{where} must be at most {high} characters")


def _check_array(obj: dict, key: str, path: str, *, required=False, nullable=False, low: int | None = None,
                 high: int | None = None) -> list:
    where = f"{path}.{key}" if path else key
    if key not in obj or (obj[key] is None and nullable):
        if required:
            _fail(where, f"{where} is a required field")
        return []
    value = obj[key]
    if not isinstance(value, list):
        _fail(where, f"{where} must be a `array` type, but the final value was: `{_shown(value)}`.")
    if low is not None and len(value) < low:
        _fail(where, f"{where} field must have at least {low} items")
    if high is not None and len(value) > high:
        _fail(where, f"{where} field must have less than or equal to {high} items")
    return value


def _check_object(value, where: str) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"{where} must be a `object` type, but the final value was: `{_shown(value)}`.")
    return value


def _check_schema(payload: Any) -> None:
    """upload-batch's schema (apps/webapp/app/api/feature/upload-batch/route.tsx in the neuronpedia repo)."""
    _check_object(payload, "this")
    for key in ("modelId", "source"):
        _check_string(payload.get(key), key)
    for i, feature in enumerate(_check_array(payload, "features", "", required=True, low=1,
                                             high=MAX_FEATURES_PER_UPLOAD)):
        here = f"features[{i}]"
        _check_object(feature, here)
        _check_number(feature.get("index", _MISSING), f"{here}.index", required=True, integer=True, low=0,
                      high=MAX_FEATURE_INDEX)
        _check_number(feature.get("density", _MISSING), f"{here}.density", low=0, high=1)
        for key in ("topLogits", "bottomLogits"):
            for j, logit in enumerate(_check_array(feature, key, here, nullable=True, high=MAX_LOGITS)):
                _check_object(logit, f"{here}.{key}[{j}]")
                _check_string(logit.get("token"), f"{here}.{key}[{j}].token")
                _check_number(logit.get("value", _MISSING), f"{here}.{key}[{j}].value", required=True)
        for j, explanation in enumerate(_check_array(feature, "explanations", here)):
            _check_object(explanation, f"{here}.explanations[{j}]")
            _check_string(explanation.get("text"), f"{here}.explanations[{j}].text", high=MAX_EXPLANATION_CHARS)
            for key in ("methodName", "modelName"):
                if explanation.get(key) is not None:
                    _check_string(explanation[key], f"{here}.explanations[{j}].{key}")
        for j, activation in enumerate(_check_array(feature, "activations", here, required=True, low=1)):
            at = f"{here}.activations[{j}]"
            _check_object(activation, at)
            for k, token in enumerate(_check_array(activation, "tokens", at, required=True, low=1, high=MAX_TOKENS)):
                _check_string(token, f"{at}.tokens[{k}]")
            for k, value in enumerate(_check_array(activation, "values", at, required=True, low=1, high=MAX_TOKENS)):
                _check_number(value, f"{at}.values[{k}]", required=True)
            for key, low in (("quantileMax", None), ("quantileMin", None), ("quantileFraction", 0)):
                _check_number(activation.get(key, _MISSING), f"{at}.{key}", nullable=True, low=low,
                              high=1 if key == "quantileFraction" else MAX_QUANTILE)


# --------------------------------------------------------------------------- errors


class NeuronpediaError(Exception):
    """A request Neuronpedia refused, or that did not reach it. `status` is the HTTP status (None if there was
    no answer), `message` the server's own words, `body` its parsed JSON (or None)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None, request: str = ""):
        super().__init__(f"{request} -> {status}: {message}" if request and status else
                         f"{request}: {message}" if request else message)
        self.message, self.status, self.body, self.request = message, status, body, request


class NeuronpediaMissingApiKey(NeuronpediaError):
    """A write route was called without an API key (nothing was sent)."""


class NeuronpediaConnectionError(NeuronpediaError):
    """No HTTP answer: the connection failed or timed out."""


class NeuronpediaInvalidResponse(NeuronpediaError):
    """A success status whose body is not JSON."""


class NeuronpediaBadRequest(NeuronpediaError):
    """400. `path` names the offending field when the server says (schema errors)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None, request: str = ""):
        super().__init__(message, status, body, request)
        self.path = body.get("path") if isinstance(body, dict) else None


class NeuronpediaUnauthorized(NeuronpediaError):
    """401: a missing or unknown API key on a route that needs one."""


class NeuronpediaForbidden(NeuronpediaError):
    """403."""


class NeuronpediaNotFound(NeuronpediaError):
    """404, or a source set the server answered with `null`."""


class NeuronpediaRateLimited(NeuronpediaError):
    """429. Limits are per IP over a sliding 60-minute window and come with no Retry-After: wait, do not retry."""

    def __init__(self, message: str, status: int | None = None, body: Any = None, request: str = ""):
        super().__init__(message, status, body, request)
        body = body if isinstance(body, dict) else {}
        self.endpoint = body.get("endpoint")
        self.limit_per_window = body.get("limitPerWindow")
        self.window = body.get("requestWindow")
        self.remaining = body.get("remainingRequests")


class NeuronpediaServerError(NeuronpediaError):
    """5xx. For upload-batch this is also how the server reports an unknown source or source set, an upload to
    a set someone else created, or an unknown explanation method or model."""


class NeuronpediaUploadInterrupted(NeuronpediaError):
    """An upload stopped after some batches were stored. `uploaded` are the indexes now on the server,
    `remaining` the ones to send again (after checking with `get_feature` if the failure was a lost
    connection: that batch may have arrived); `cause` is the error of the failed batch."""

    def __init__(self, cause: NeuronpediaError, uploaded: list[int], remaining: list[int]):
        super().__init__(f"upload stopped after {len(uploaded)} features ({len(remaining)} not uploaded): {cause}",
                         cause.status, cause.body, cause.request)
        self.cause, self.uploaded, self.remaining = cause, uploaded, remaining


ERRORS_BY_STATUS = {400: NeuronpediaBadRequest, 401: NeuronpediaUnauthorized, 403: NeuronpediaForbidden,
                    404: NeuronpediaNotFound, 429: NeuronpediaRateLimited}


# --------------------------------------------------------------------------- the client


class NeuronpediaClient:
    """A small client for Neuronpedia's REST API (https://www.neuronpedia.org/api-doc).

    `base_url` is the site (its /api is added), so a self-hosted instance or a local fake works the
    same. `api_key` defaults to $NEURONPEDIA_API_KEY; reads work without one, writes refuse to start.
    Reads make up to `attempts` tries on connection errors and 502/503/504, waiting `backoff`,
    2 `backoff`, ... seconds; writes and 429s are never retried. `limit_remaining` is the last
    x-limit-remaining the server reported.
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None, *, timeout: float = 60.0,
                 attempts: int = 3, backoff: float = 1.0, user_agent: str = "saekit"):
        if attempts < 1 or backoff < 0 or timeout <= 0:
            raise ValueError(f"need attempts >= 1, backoff >= 0 and timeout > 0; got {attempts}, {backoff}, {timeout}")
        self.base_url = _normalized_base(base_url)
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self.timeout, self.attempts, self.backoff, self.user_agent = timeout, attempts, backoff, user_agent
        self.limit_remaining: int | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"NeuronpediaClient({self.base_url!r}, api_key={'set' if self.api_key else 'unset'})"

    # ------------------------------------------------------------------ reads

    def get_feature(self, model_id: str, source: str, index: int | str) -> dict:
        """The feature's page data: the Neuron row with `activations`, `explanations`, `model`, `source`, ..."""
        return self._request("GET", "/feature/" + "/".join(_path_part(p) for p in (model_id, source, index)))

    def get_activations(self, model_id: str, source: str, index: int | str) -> list[dict]:
        """Every public activation example of a feature, largest first."""
        body = {"modelId": model_id, "source": source, "index": str(index)}  # the server compares it as a string
        return self._request("POST", "/activation/get", body, retry=True)

    def get_source_set(self, model_id: str, name: str) -> dict:
        """A source set with its `sources` (those you may see), `releases` and `model`; NeuronpediaNotFound if none."""
        route = f"/source-set/{_path_part(model_id)}/{_path_part(name)}"
        found = self._request("GET", route)
        if found is None:  # the server answers 200 `null` for a missing set
            raise NeuronpediaNotFound(f"no source set {name!r} for model {model_id!r}", 200, None, f"GET {route}")
        return found

    # ------------------------------------------------------------------ writes (API key, no retries)

    def create_model(self, model_id: str, layers: int, display_name: str | None = None,
                     url: str | None = None) -> dict:
        """Create an UNLISTED model you own (at most 5 an hour); returns its row."""
        validate_model_id(model_id)
        if not _is_int(layers) or not 1 <= layers <= 127:
            raise ValueError(f"layers must be an int in 1..127, got {layers!r}")
        body = {"id": model_id, "layers": layers, **_given(displayName=display_name, url=url)}
        return self._request("POST", "/model/new", body, write=True)

    def create_source_set(self, model_id: str, name: str, description: str | None = None,
                          url: str | None = None) -> dict:
        """Create a source set with one source per model layer ("0-{name}", ...), at most 10 an hour.

        The answer lists no sources: the server fetches it as an anonymous user, who cannot see
        new (UNLISTED) sources. `get_source_set` with your key shows them."""
        validate_model_id(model_id)
        validate_source_set_name(name)
        if description is not None and len(description) > 128:
            raise ValueError(f"a source-set description must be at most 128 characters, got {len(description)}")
        body = {"modelId": model_id, "name": name, **_given(description=description, url=url)}
        return self._request("POST", "/source-set/new", body, write=True)

    def upload_features(self, model_id: str, source: str, features: Iterable[UploadFeature],
                        chunk_size: int = MAX_FEATURES_PER_UPLOAD) -> int:
        """Upload dashboards to a source of a set you created, `chunk_size` (<= 128) per request; returns how
        many features were sent. Everything is checked before the first request; a failure after the
        first batch raises NeuronpediaUploadInterrupted. Uploading a feature again adds its activations
        and explanations a second time (the feature itself keeps its first density and logits)."""
        payloads = upload_batch_payloads(model_id, source, features, chunk_size)
        self._require_key("POST", "/feature/upload-batch")
        sent: list[int] = []
        for number, payload in enumerate(payloads):
            try:
                self._request("POST", "/feature/upload-batch", payload, write=True)
            except NeuronpediaError as exc:
                if not sent:
                    raise
                remaining = [feature["index"] for rest in payloads[number:] for feature in rest["features"]]
                raise NeuronpediaUploadInterrupted(exc, sent, remaining) from exc
            sent.extend(feature["index"] for feature in payload["features"])
        return len(sent)

    # ------------------------------------------------------------------ plumbing

    def _require_key(self, method: str, route: str) -> None:
        if not self.api_key:
            raise NeuronpediaMissingApiKey(f"this route needs an API key: pass api_key= or set ${API_KEY_ENV} "
                                           "(the key is under Settings on neuronpedia.org)", None, None,
                                           f"{method} {route}")

    def _request(self, method: str, route: str, body: Any = None, *, write: bool = False, retry: bool = False):
        request_name = f"{method} {route}"
        if write:
            self._require_key(method, route)
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip", "User-Agent": self.user_agent}
        data = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["x-api-key"] = self.api_key
        tries = self.attempts if (method == "GET" or retry) and not write else 1  # reads only
        for attempt in range(tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.base_url + "/api" + route, data, headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    status, raw, response_headers = response.status, response.read(), response.headers
            except urllib.error.HTTPError as exc:
                status, raw, response_headers = exc.code, exc.read(), exc.headers
            except (urllib.error.URLError, OSError) as exc:
                if attempt + 1 < tries:
                    continue
                reason = getattr(exc, "reason", exc)
                hint = " (the request may have reached the server: check before sending it again)" if write else ""
                raise NeuronpediaConnectionError(f"no answer from {self.base_url}: {reason}{hint}", None, None,
                                                 request_name) from exc
            if status in RETRIED_STATUSES and attempt + 1 < tries:
                continue
            return self._answer(request_name, status, raw, response_headers)

    def _answer(self, request_name: str, status: int, raw: bytes, headers) -> Any:
        remaining = headers.get("x-limit-remaining")
        if remaining is not None and remaining.strip().lstrip("-").isdigit():
            self.limit_remaining = int(remaining)
        if headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8", errors="replace")
        try:
            body, is_json = json.loads(text), True
        except ValueError:
            body, is_json = None, False
        if 200 <= status < 300:
            if not is_json:
                raise NeuronpediaInvalidResponse(f"expected JSON, got {text[:200]!r}", status, None, request_name)
            return body
        message = (body.get("error") or body.get("message")) if isinstance(body, dict) else None
        message = str(message or text.strip()[:500] or f"HTTP {status}")
        error = ERRORS_BY_STATUS.get(status, NeuronpediaServerError if status >= 500 else NeuronpediaError)
        raise error(message, status, body, request_name)


def _normalized_base(base_url: str) -> str:
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected a base URL like {DEFAULT_BASE_URL!r}, got {base_url!r}")
    base = base_url.rstrip("/")
    return base[: -len("/api")] if base.endswith("/api") else base


def _path_part(value) -> str:
    text = str(value)
    if not text:
        raise ValueError("model ids, sources and indexes in a URL must not be empty")
    return urllib.parse.quote(text, safe="")


def _given(**fields) -> dict:
    return {key: value for key, value in fields.items() if value is not None}
