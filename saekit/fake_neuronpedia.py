"""
A local stand-in for Neuronpedia's REST API, for offline tests and the sharing notebook.

`FakeNeuronpedia` serves, on 127.0.0.1 and a free port, in a background thread, the routes
saekit's client uses, with the shapes and the failure modes of the real webapp (read from
hijohnnylin/neuronpedia, apps/webapp): same JSON bodies, same status codes, same messages.

    with FakeNeuronpedia(users={"my-key": "alice"}) as server:
        client = NeuronpediaClient(server.base_url, api_key="my-key")

The name rules are the server's own, written out here apart from saekit.neuronpedia's checks, so the
tests compare the two; the upload-batch schema check is shared (`upload_schema_error`). What it reproduces:
- GET  /api/feature/{modelId}/{source}/{index}: the Neuron row with model, source, sourceSet, creator,
  activations (largest first) and explanations; 404 {error} for a missing feature, 404 {error,
  message} for a missing model or source set;
- POST /api/activation/get {modelId, source, index}: the activation rows; `index` must be a string
  (a number makes the real database query fail: 500);
- GET  /api/source-set/{modelId}/{name}: the set with its sources (UNLISTED ones only for their
  creator), or 200 `null`;
- POST /api/model/new, /api/source-set/new: the server's validation (400 {error, path}), "Model
  already exists", "Model not found", "Source set name already exists for this model."; a new set
  gets sources 0..layers-1, and the answer lists none of them (the server reads it back anonymously);
- POST /api/feature/upload-batch: 400 {error, path} for schema errors; an opaque 500 for an unknown
  source set or source, a set the user did not create, tokens/values of different lengths,
  repeated indexes or unknown explanation names; a re-uploaded feature keeps its first row but
  gets its activations and explanations again;
- a missing or unknown key on a write route: 401 with the real text; on a read it is ignored;
- rate limits: the real per-prefix table (every matching limiter counts; the first one over its
  limit answers 429 with the real body), `x-limit-remaining` on answers; pass `rate_limits` to
  make them tiny;
- unknown routes: Next.js's HTML 404 page; `answer_next(503)` makes the next answers fail, for retries.

Everything lives in memory; ids and timestamps are deterministic. It is seeded with one public
feature, gpt2-small/6-res-jb/14057, in the shape of a real one.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from saekit.neuronpedia import upload_content_error, upload_schema_error

UNAUTHORIZED = ("This endpoint requires authorization. Specify your API key in the header x-api-key. "
                "Your API key is under Settings on neuronpedia.org.")
SERVER_FAULT = "Something went wrong on our end. The error has been reported."
PUBLIC_ACTIVATIONS_USER_ID = "cljj57d3c000076ei38vwnv35"
# the real table (apps/webapp/middleware.ts) for the routes served here; note that the upload limit is
# written for /api/features/upload-batch, which is not the route's path, so only the catch-alls count uploads
REAL_RATE_LIMITS = [("/", 25000), ("/api", 25000), ("/api/activation/new", 1000), ("/api/explanation/search", 200),
                    ("/api/steer", 240), ("/api/features/upload-batch", 1000), ("/api/model/new", 5),
                    ("/api/source-set/new", 10)]
# some names from the real explanation-type and explanation-model tables (the fake knows only these)
EXPLANATION_TYPES = {"oai_token-act-pair", "oai_attention-head", "np_max-act-logits", "np_max-act",
                     "np_acts-logits-general"}
EXPLANATION_MODELS = {"gpt-4o-mini", "claude-4-5-haiku", "claude-4-5-sonnet"}
NOT_FOUND_PAGE = "<!DOCTYPE html><html><head><title>404: This page could not be found.</title></head><body>" \
                 "<h1>404</h1><h2>This page could not be found.</h2></body></html>"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text if it was not JSON, or None


@dataclass
class _Answer:
    status: int
    body: Any = None  # JSON-serialisable, or str for text/html
    headers: dict[str, str] = field(default_factory=dict)


class _ApiError(Exception):
    """The webapp's ApiError / thrown errors: the status and the JSON body its error handler writes."""

    def __init__(self, status: int, body: Any):
        super().__init__(status)
        self.status, self.body = status, body


def _opaque() -> _ApiError:
    return _ApiError(500, {"error": SERVER_FAULT, "message": SERVER_FAULT})


class FakeNeuronpedia:
    """An in-memory Neuronpedia on http://127.0.0.1:<free port>. `users` maps API keys to user names."""

    def __init__(self, users: dict[str, str] | None = None, rate_limits: list[tuple[str, int]] | None = None):
        self.users = {key: {"id": f"user-{name}", "name": name} for key, name in (users or {}).items()}
        self.rate_limits = list(REAL_RATE_LIMITS if rate_limits is None else rate_limits)
        self.requests: list[RecordedRequest] = []
        self.models: dict[str, dict] = {}
        self.source_sets: dict[tuple[str, str], dict] = {}
        self.sources: dict[tuple[str, str], dict] = {}
        self.neurons: dict[tuple[str, str, str], dict] = {}
        self.activations: list[dict] = []
        self.explanations: list[dict] = []
        self._counts = [0] * len(self.rate_limits)
        self._canned: list[tuple[int, str]] = []
        self._ids = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._seed()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeNeuronpedia:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-neuronpedia", daemon=True)  # a short poll makes stop() quick
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> FakeNeuronpedia:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake server is not running: call start() or use it in a `with` block")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer_next(self, status: int, text: str = "An error occurred with your deployment", times: int = 1) -> None:
        """Answer the next `times` requests with `status` and a plain-text body, as a failing proxy would."""
        with self._lock:
            self._canned.extend([(status, text)] * times)

    # ------------------------------------------------------------------ dispatch

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> _Answer:
        path = urllib.parse.urlsplit(raw_path).path
        text = raw_body.decode("utf-8", errors="replace")
        try:
            body = json.loads(text, parse_constant=_refuse_constant) if text else None
            parsed = True
        except ValueError:
            body, parsed = text, False
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body))
            if self._canned:
                return _Answer(*self._canned.pop(0))
            limited, remaining = self._rate_limit(path.lower())
            if limited is not None:
                return limited
            try:
                answer = self._route(method, path, headers, body, parsed)
            except _ApiError as exc:
                answer = _Answer(exc.status, exc.body)
            if remaining is not None and path.startswith("/api"):
                answer.headers["x-limit-remaining"] = str(remaining)
            return answer

    def _rate_limit(self, path: str) -> tuple[_Answer | None, int | None]:
        remaining = None
        for number, (endpoint, limit) in enumerate(self.rate_limits):
            if not path.startswith(endpoint):
                continue
            self._counts[number] += 1
            remaining = max(limit - self._counts[number], 0)
            if self._counts[number] > limit:
                return _Answer(429, {
                    "endpoint": endpoint, "limitPerWindow": limit, "requestWindow": "60 m", "remainingRequests": 0,
                    "error": f"Rate limit exceeded for this endpoint. The limit for this endpoint ({endpoint}) is "
                             f"{limit} requests per 60 m. Contact support@neuronpedia.org to increase your rate "
                             "limit."}), None
        return None, remaining

    def _route(self, method: str, path: str, headers: dict[str, str], body: Any, parsed: bool) -> _Answer:
        parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
        user = self.users.get(headers.get("x-api-key", ""))  # an unknown key counts as none
        routes = [
            ("GET", ["api", "feature", None, None, None], lambda: self._get_feature(*parts[2:])),
            ("GET", ["api", "source-set", None, None], lambda: self._get_source_set(parts[2], parts[3], user)),
            ("POST", ["api", "activation", "get"], lambda: self._get_activations(body if parsed else None)),
            ("POST", ["api", "model", "new"], lambda: self._new_model(*self._authed(user, body, parsed))),
            ("POST", ["api", "source-set", "new"], lambda: self._new_source_set(*self._authed(user, body, parsed))),
            ("POST", ["api", "feature", "upload-batch"], lambda: self._upload_batch(*self._authed(user, body, parsed))),
        ]
        matching = [(route_method, run) for route_method, pattern, run in routes
                    if len(pattern) == len(parts) and all(p is None or p == q for p, q in zip(pattern, parts))]
        for route_method, run in matching:
            if route_method == method:
                return _Answer(200, run())
        return _Answer(405, "") if matching else _Answer(404, NOT_FOUND_PAGE)

    @staticmethod
    def _authed(user: dict | None, body: Any, parsed: bool) -> tuple[Any, dict]:
        """withAuthedUser: 401 before anything else; then a body that is not JSON makes request.json() throw,
        which the error handler turns into an opaque 500."""
        if user is None:
            raise _ApiError(401, {"error": UNAUTHORIZED})
        if not parsed or body is None:
            raise _opaque()
        return body, user

    # ------------------------------------------------------------------ reads

    def _not_found(self, with_message: bool) -> _ApiError:
        text = ("The model, source, or feature you specified is not available. Check available public "
                f"models/sources (including which ones have inference enabled) at {self.base_url}/available-resources")
        return _ApiError(404, {"error": text, "message": text} if with_message else {"error": text})

    def _get_feature(self, model_id: str, source: str, index: str) -> dict:
        set_name = _source_set_of(source)
        if model_id not in self.models or (model_id, set_name) not in self.source_sets:
            raise self._not_found(with_message=True)
        neuron = self.neurons.get((model_id, source, index))
        if neuron is None:
            raise self._not_found(with_message=False)
        key = (model_id, source, index)
        explanations = [{"id": e["id"], "description": e["description"], "explanationModelName": e["modelName"],
                         "typeName": e["typeName"], "scores": [], "triggeredByUser": None}
                        for e in self.explanations if _feature_key(e) == key]
        creator = next((u["name"] for u in [*self.users.values(), {"id": "neuronpedia", "name": "neuronpedia"}]
                        if u["id"] == neuron["creatorId"]), None)
        return {**neuron, "correlated_features_indices": [], "correlated_features_pearson": [],
                "correlated_features_l1": [], "model": self.models[model_id], "lists": [],
                "creator": {"name": creator}, "source": self.sources.get((model_id, source)),
                "sourceSet": self.source_sets[(model_id, set_name)], "comments": [],
                "activations": self._public_activations(key), "explanations": explanations}

    def _get_activations(self, body: Any) -> list[dict]:
        if body is None:  # the route catches its own errors, a body that is not JSON included
            raise _ApiError(500, {"error": "Internal server error"})
        if not isinstance(body, dict) or not all(body.get(key) for key in ("modelId", "source", "index")):
            raise _ApiError(400, {"error": "Missing required parameters"})
        if not isinstance(body["index"], str):  # prisma refuses a number for the text column; the route says 500
            raise _ApiError(500, {"error": "Internal server error"})
        found = self._public_activations((body["modelId"], body["source"], body["index"]))
        if not found:
            raise self._not_found(with_message=False)
        return found

    def _public_activations(self, key: tuple[str, str, str]) -> list[dict]:
        found = [a for a in self.activations if _feature_key(a) == key and a["creatorId"] == PUBLIC_ACTIVATIONS_USER_ID]
        return sorted(found, key=lambda a: -a["maxValue"])

    def _get_source_set(self, model_id: str, name: str, user: dict | None) -> dict | None:
        found = self.source_sets.get((model_id, name))
        if found is None:
            return None
        visible = [s for s in self.sources.values() if (s["modelId"], s["setName"]) == (model_id, name)
                   and (s["visibility"] == "PUBLIC" or (user is not None and s["creatorId"] == user["id"]))]
        return {**found, "sources": sorted(visible, key=lambda s: int(s["id"].split("-")[0])), "releases": [],
                "model": self.models[model_id]}

    # ------------------------------------------------------------------ writes

    def _new_model(self, body: Any, user: dict) -> dict:
        body = _object(body)
        model_id = body.get("id")
        _required_string(model_id, "id")
        _yup(len(model_id) >= 2, "id", "id must be at least 2 characters")
        _yup(len(model_id) <= 32, "id", "Model ID must be less than 32 characters")
        _yup(re.match(r"^[a-z][a-z0-9.-]*[a-z0-9]$|^[a-z]$", model_id) is not None, "id",
             "Name must contain only lowercase letters, digits, hyphens, and periods, start with a lowercase letter, "
             "not end with a hyphen or period, and not contain double hyphens")
        _yup("--" not in model_id, "id", "Name cannot contain double hyphens")
        _yup(".." not in model_id, "id", "Name cannot contain double periods")
        layers = body.get("layers")
        _yup(layers is not None, "layers", "layers is a required field")
        _yup(isinstance(layers, int) and not isinstance(layers, bool), "layers",
             f"layers must be a `number` type, but the final value was: `{json.dumps(layers)}`.")
        _yup(layers >= 1, "layers", "layers must be greater than or equal to 1")
        _yup(layers <= 127, "layers", "Layers must be an integer less than 128")
        display_name = body.get("displayName")
        if display_name is not None:
            _required_string(display_name, "displayName")
            _yup(len(display_name) <= 64, "displayName", "Display name must be less than 64 characters")
        _check_url(body.get("url"))
        if model_id in self.models:
            raise _ApiError(400, {"error": "Model already exists"})
        now = self._now()
        self.models[model_id] = {
            "id": model_id, "displayNameShort": display_name or model_id, "displayName": display_name or model_id,
            "creatorId": user["id"], "tlensId": None, "openRouterId": None, "dimension": None, "thinking": False,
            "visibility": "UNLISTED", "defaultSourceSetName": None, "defaultSourceId": None,
            "defaultGraphSourceSetName": None, "inferenceEnabled": False, "instruct": False, "layers": layers,
            "neuronsPerLayer": 0, "createdAt": now, "owner": "custom", "updatedAt": now, "website": body.get("url")}
        return self.models[model_id]

    def _new_source_set(self, body: Any, user: dict) -> dict:
        body = _object(body)
        name = body.get("name")
        _required_string(name, "name")
        _yup(re.match(r"^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z0-9]$", name) is not None, "name",
             "Name must contain only lowercase letters, digits, and hyphens, start with a letter or digit, not end "
             "with a hyphen, and not contain double hyphens")
        _yup(name != "neurons", "name", 'Name cannot be "neurons"')
        _yup("--" not in name, "name", "Name cannot contain double hyphens")
        _required_string(body.get("modelId"), "modelId")
        description = body.get("description")
        if description is not None:
            _yup(isinstance(description, str) and len(description) <= 128, "description",
                 "Description must be less than 128 characters")
        _check_url(body.get("url"))
        model = self.models.get(body["modelId"])
        if model is None:
            raise _ApiError(400, {"error": "Model not found"})
        if (model["id"], name) in self.source_sets:
            raise _ApiError(400, {"error": "Source set name already exists for this model."})
        now = self._now()
        self.source_sets[(model["id"], name)] = {
            "modelId": model["id"], "name": name, "hasDashboards": True, "allowInferenceSearch": False,
            "visibility": "UNLISTED", "description": description or name, "type": "Custom",
            "creatorName": user["name"], "creatorEmail": None, "creatorId": user["id"], "releaseName": None,
            "urls": [body.get("url") or ""], "hasGraphs": False, "graphEnabled": False,
            "similarityMatrixEnabled": False, "defaultOfModelId": None, "defaultGraphModelId": None,
            "defaultRange": 1, "defaultShowBreaks": True, "showDfa": False, "showCorrelated": False,
            "showHeadAttribution": False, "showUmap": False, "createdAt": now}
        for layer in range(model["layers"]):
            self._add_source(model["id"], name, layer, user["id"], "UNLISTED")
        return self._get_source_set(model["id"], name, None)  # read back anonymously: no UNLISTED sources

    def _upload_batch(self, body: Any, user: dict) -> dict:
        error = upload_schema_error(body)
        if error is not None:
            raise _ApiError(400, {"error": error.message, "path": error.path})
        model_id, source = body["modelId"].lower(), body["source"].lower()  # the schema lowercases them
        set_name = _source_set_of(source)
        found = self._get_source_set(model_id, set_name, user)
        if found is None or found["creatorId"] != user["id"]:
            raise _opaque()
        if not any(s["id"] == source for s in found["sources"]):
            raise _opaque()
        features = body["features"]
        names = {(e.get("methodName"), e.get("modelName")) for f in features for e in f.get("explanations") or []}
        if (upload_content_error(body) is not None
                or any(m is not None and m.lower() not in EXPLANATION_TYPES for m, _ in names)
                or any(n is not None and n.lower() not in EXPLANATION_MODELS for _, n in names)):
            raise _opaque()
        for feature in features:
            index = str(int(feature["index"]))
            activations = feature["activations"]
            max_act = max([0.0] + [max(a["values"]) for a in activations])
            self.neurons.setdefault((model_id, source, index), self._neuron(model_id, source, index, set_name,
                                                                             feature, max_act, user))
            for explanation in feature.get("explanations") or []:
                self.explanations.append({
                    "id": self._id(), "description": explanation["text"], "authorId": user["id"], "index": index,
                    "layer": source, "modelId": model_id, "typeName": explanation.get("methodName"),
                    "modelName": explanation.get("modelName")})
            for activation in activations:
                self.activations.append(self._activation(model_id, source, index, activation, user))
        return {"message": f"{len(features)} features created."}

    # ------------------------------------------------------------------ rows

    def _id(self) -> str:
        self._ids += 1
        return f"cfake{self._ids:020d}"  # 25 characters, like a cuid

    @staticmethod
    def _now() -> str:
        return "2026-01-01T00:00:00.000Z"

    def _add_source(self, model_id: str, set_name: str, layer: int, creator_id: str, visibility: str) -> None:
        source = f"{layer}-{set_name}"
        self.sources[(model_id, source)] = {
            "id": source, "modelId": model_id, "setName": set_name, "hasDashboards": True, "inferenceEnabled": False,
            "saelensConfig": None, "saelensRelease": None, "saelensSaeId": None, "hfRepoId": None,
            "hfFolderId": None, "visibility": visibility, "defaultOfModelId": None, "creatorId": creator_id,
            "hasUmap": False, "hasUmapLogSparsity": False, "hasUmapClusters": False, "num_prompts": None,
            "num_tokens_in_prompt": None, "dataset": None, "notes": None, "cosSimMatchModelId": None,
            "cosSimMatchSourceId": None, "createdAt": self._now()}

    def _neuron(self, model_id: str, source: str, index: str, set_name: str, feature: dict, max_act: float,
                user: dict) -> dict:
        top, bottom = feature.get("topLogits") or [], feature.get("bottomLogits") or []
        empty = ("topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices", "neuron_alignment_values",
                 "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
                 "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson",
                 "correlated_features_l1", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
                 "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist")
        return {"modelId": model_id, "layer": source, "index": index, "sourceSetName": set_name,
                "creatorId": user["id"], "createdAt": self._now(), "maxActApprox": max_act, "hasVector": False,
                "vector": [], "vectorLabel": None, "vectorDefaultSteerStrength": 10, "hookName": None,
                **{key: [] for key in empty},
                "neg_str": [logit["token"] for logit in bottom], "neg_values": [logit["value"] for logit in bottom],
                "pos_str": [logit["token"] for logit in top], "pos_values": [logit["value"] for logit in top],
                "frac_nonzero": feature.get("density", -1), "umap_cluster": None,
                "umap_log_feature_sparsity": None, "umap_x": None, "umap_y": None}

    def _activation(self, model_id: str, source: str, index: str, activation: dict, user: dict) -> dict:
        values = activation["values"]
        top = max(values)
        return {"id": self._id(), "tokens": activation["tokens"], "dataIndex": user["id"], "index": index,
                "layer": source, "modelId": model_id, "dataSource": f"User {user['name']}", "maxValue": top,
                "maxValueTokenIndex": values.index(top), "minValue": min(values), "values": values,
                "dfaValues": [], "dfaTargetIndex": None, "dfaMaxValue": None, "zQIndices": [], "zKIndices": [],
                "zValues": [], "creatorId": PUBLIC_ACTIVATIONS_USER_ID, "createdAt": self._now(), "lossValues": [],
                "logitContributions": None, "binMin": activation.get("quantileMin"),
                "binMax": activation.get("quantileMax"), "binContains": activation.get("quantileFraction"),
                "qualifyingTokenIndex": None}

    def _seed(self) -> None:
        owner = {"id": "neuronpedia", "name": "neuronpedia"}
        self.models["gpt2-small"] = {
            "id": "gpt2-small", "displayNameShort": "GPT2-SM", "displayName": "GPT2-Small", "creatorId": owner["id"],
            "tlensId": "gpt2-small", "openRouterId": None, "dimension": 768, "thinking": False, "visibility": "PUBLIC",
            "defaultSourceSetName": "res-jb", "defaultSourceId": "6-res-jb", "defaultGraphSourceSetName": None,
            "inferenceEnabled": True, "instruct": False, "layers": 12, "neuronsPerLayer": 3072,
            "createdAt": "2024-01-01T00:00:00.000Z", "owner": "OpenAI", "updatedAt": "2024-01-01T00:00:00.000Z",
            "website": None}
        self.source_sets[("gpt2-small", "res-jb")] = {
            "modelId": "gpt2-small", "name": "res-jb", "hasDashboards": True, "allowInferenceSearch": True,
            "visibility": "PUBLIC", "description": "Residual Stream - 24k", "type": "", "creatorName": "Joseph Bloom",
            "creatorEmail": None, "creatorId": owner["id"], "releaseName": "res-jb", "urls": [], "hasGraphs": False,
            "graphEnabled": False, "similarityMatrixEnabled": False, "defaultOfModelId": None,
            "defaultGraphModelId": None, "defaultRange": 1, "defaultShowBreaks": True, "showDfa": False,
            "showCorrelated": False, "showHeadAttribution": False, "showUmap": False,
            "createdAt": "2024-01-01T00:00:00.000Z"}
        for layer in range(12):
            self._add_source("gpt2-small", "res-jb", layer, owner["id"], "PUBLIC")
        feature = {"index": 14057, "density": 0.00021,
                   "topLogits": [{"token": " Brigade", "value": 3.753}, {"token": " brigade", "value": 3.063}],
                   "bottomLogits": [{"token": "sequence", "value": -0.707}, {"token": "ogen", "value": -0.674}],
                   "activations": [{"tokens": [" the", " Light", " Brigade", " charged"], "values": [0, 0.4, 6.2, 0.8],
                                    "quantileMin": -1, "quantileMax": 6.2},
                                   {"tokens": [" a", " fire", " brigade", "."], "values": [0, 0.1, 3.9, 0],
                                    "quantileMin": 2.48, "quantileMax": 3.72, "quantileFraction": 0.00004}]}
        self.neurons[("gpt2-small", "6-res-jb", "14057")] = self._neuron("gpt2-small", "6-res-jb", "14057", "res-jb",
                                                                         feature, 6.2, owner)
        for activation in feature["activations"]:
            self.activations.append(self._activation("gpt2-small", "6-res-jb", "14057", activation, owner))
        self.explanations.append({"id": self._id(), "description": "military brigades", "authorId": owner["id"],
                                  "index": "14057", "layer": "6-res-jb", "modelId": "gpt2-small",
                                  "typeName": "oai_token-act-pair", "modelName": "gpt-4o-mini"})


class _Handler(BaseHTTPRequestHandler):
    fake: FakeNeuronpedia
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: tests and notebooks read the recorded requests instead
        pass

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        answer = self.fake._handle(method, self.path, headers, raw)
        is_text = isinstance(answer.body, str)
        payload = (answer.body if is_text else json.dumps(answer.body)).encode()
        content_type = "text/html; charset=utf-8" if is_text else "application/json"
        self.send_response(answer.status)
        self.send_header("Content-Type", content_type)
        if payload and "gzip" in headers.get("accept-encoding", ""):
            payload = gzip.compress(payload, mtime=0)
            self.send_header("Content-Encoding", "gzip")
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _source_set_of(source: str) -> str:
    """Neuronpedia's getSourceSetNameFromSource: after the first '-', up to '__' ('neurons' for a bare number)."""
    if re.fullmatch(r"-?\d+", source):
        return "neurons"
    return source.split("-", 1)[1].split("__")[0] if "-" in source else source


def _feature_key(row: dict) -> tuple[str, str, str]:
    return row["modelId"], row["layer"], row["index"]


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _yup(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise _ApiError(400, {"error": message, "path": path})


def _object(body: Any) -> dict:
    _yup(isinstance(body, dict), "", "this must be a `object` type")
    return body


def _required_string(value: Any, path: str) -> None:
    _yup(value is not None and value != "", path, f"{path} is a required field")
    _yup(isinstance(value, str), path, f"{path} must be a `string` type, but the final value was: "
                                       f"`{json.dumps(value)}`.")


def _check_url(url: Any) -> None:
    if url is None:
        return
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    _yup(parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc), "url", "Must be a valid URL")
