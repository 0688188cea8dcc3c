"""Neuronpedia: naming rules, upload payloads and the client, against the local fake server (127.0.0.1,
no network), which answers with the real webapp's shapes and failure modes."""

import json
import urllib.error
import urllib.request

import pytest
import torch

from saekit.fake_neuronpedia import UNAUTHORIZED, FakeNeuronpedia
from saekit.neuronpedia import (
    TOP_ACTIVATIONS_MIN,
    NeuronpediaBadRequest,
    NeuronpediaClient,
    NeuronpediaConnectionError,
    NeuronpediaError,
    NeuronpediaForbidden,
    NeuronpediaInvalidResponse,
    NeuronpediaMissingApiKey,
    NeuronpediaNameError,
    NeuronpediaNotFound,
    NeuronpediaPayloadError,
    NeuronpediaRateLimited,
    NeuronpediaServerError,
    NeuronpediaUnauthorized,
    NeuronpediaUploadInterrupted,
    SourceId,
    UploadActivation,
    UploadFeature,
    feature_url,
    make_source_id,
    nanochat_model_id,
    neuronpedia_id,
    parse_source_id,
    source_id,
    source_set_name,
    upload_batch_payloads,
    upload_schema_error,
    validate_model_id,
    validate_source_set_name,
    width_label,
)

ALICE, BOB = "key-alice", "key-bob"
MODEL, SET = "nanochat-d6", "saekit-res-1k"
SOURCE = f"3-{SET}"


@pytest.fixture
def server():
    with FakeNeuronpedia(users={ALICE: "alice", BOB: "bob"}) as fake:
        yield fake


def client(server, key=ALICE, **options):
    return NeuronpediaClient(server.base_url, api_key=key, backoff=0, **options)


@pytest.fixture
def alices_set(server):
    """A model and source set owned by alice, as a real upload starts."""
    alice = client(server)
    alice.create_model(MODEL, 6)
    alice.create_source_set(MODEL, SET)
    return alice


def feature(index, density=0.01, peak=2.0, explanation=None):
    top = UploadActivation(["The", " red", " fox"], [0.0, peak, 0.5], quantile_min=TOP_ACTIVATIONS_MIN,
                           quantile_max=peak)
    interval = UploadActivation([" a", " red", " hat"], [0.0, peak / 2, 0.0], quantile_min=0.8, quantile_max=1.2,
                                quantile_fraction=0.002)
    return UploadFeature(index, [top, interval], density=density, top_logits=[(" red", 1.5), (" blue", 0.9)],
                         bottom_logits=[(" the", -0.7)], explanations=None if explanation is None else [explanation])


def post_raw(server, route, body, key=ALICE):
    """POST straight to the fake, without the client's checks: (status, parsed body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.base_url}/api{route}", data, method="POST",
                                     headers={"Content-Type": "application/json", "x-api-key": key})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("model_id", ["nanochat-d20", "nanochat-d20-sft", "gpt2-small", "llama3.1-8b", "qwen3-1.7b"])
def test_model_ids_neuronpedia_accepts(model_id):
    assert validate_model_id(model_id) == model_id


@pytest.mark.parametrize("model_id, reason", [
    ("Nanochat-d20", "lowercase letters"), ("a", "2 to 32 characters"), ("n" * 33, "2 to 32 characters"),
    ("nanochat--d20", "'--'"), ("gpt..2", "'..'"), ("nanochat-", "not ending with"), ("1nanochat", "starting with"),
    ("nano_chat", "lowercase letters, digits, '.' and '-'"), (20, "must be a str"),
])
def test_model_ids_neuronpedia_refuses(model_id, reason):
    with pytest.raises(NeuronpediaNameError, match=reason):
        validate_model_id(model_id)


@pytest.mark.parametrize("name, ok", [
    ("saekit-res-16k", True), ("res-jb", True), ("x", True), ("7", True), ("gemmascope-res-16k", True),
    ("neurons", False), ("res_jb", False), ("-res", False), ("res-", False), ("res--jb", False), ("Res-jb", False),
    ("7-res", False),
])
def test_source_set_names_follow_the_server(server, name, ok):
    """validate_source_set_name agrees with the server's own check (the fake copies the webapp's rules)."""
    if ok:
        assert validate_source_set_name(name) == name
    else:
        with pytest.raises(NeuronpediaNameError, match="not a valid Neuronpedia source-set name"):
            validate_source_set_name(name)
    client(server).create_model(MODEL, 2)
    status, body = post_raw(server, "/source-set/new", {"modelId": MODEL, "name": name})
    assert (status == 200) == ok and (ok or body["path"] == "name")


@pytest.mark.parametrize("model_id", ["nanochat-d20", "a", "n" * 33, "Nano", "nano--chat", "x..y", "llama3.1-8b",
                                      "nano-", "ab"])
def test_model_id_check_agrees_with_the_server(server, model_id):
    try:
        validate_model_id(model_id)
        ok = True
    except NeuronpediaNameError:
        ok = False
    status, body = post_raw(server, "/model/new", {"id": model_id, "layers": 4})
    assert (status == 200) == ok, body
    if not ok:
        assert body["path"] == "id" and "error" in body


def test_source_ids_and_nanochat_names():
    assert make_source_id(12, "saekit-res-16k") == "12-saekit-res-16k"
    assert make_source_id(0, "res-jb", "l0-71") == "0-res-jb__l0-71"
    assert parse_source_id("20-gemmascope-res-16k") == SourceId(20, "gemmascope-res-16k", None)
    assert parse_source_id("0-res-jb__l0-71") == SourceId(0, "res-jb", "l0-71")
    assert nanochat_model_id(20) == "nanochat-d20" and nanochat_model_id(20, "sft") == "nanochat-d20-sft"
    assert source_set_name("blocks.12.hook_resid_post", 16384) == "saekit-res-16k"
    assert source_id("blocks.12.hook_resid_post", 16384) == "12-saekit-res-16k"
    assert source_id("blocks.3.hook_mlp_out", 2048, family="tiny") == "3-tiny-mlp-2k"
    assert source_id("blocks.0.hook_resid_pre", 1024, suffix="k32") == "0-saekit-respre-1k__k32"
    assert [width_label(n) for n in (512, 1024, 16384, 24576, 65536, 131072, 1048576)] == \
        ["512", "1k", "16k", "24k", "65k", "131k", "1m"]  # Gemma Scope's and res-jb's labels
    assert neuronpedia_id("nanochat-d20", "12-saekit-res-16k") == "nanochat-d20/12-saekit-res-16k"
    assert feature_url("nanochat-d20", "12-saekit-res-16k", 7) == \
        "https://www.neuronpedia.org/nanochat-d20/12-saekit-res-16k/7"


@pytest.mark.parametrize("call, message", [
    (lambda: parse_source_id("res-jb"), "expected a source id like"),
    (lambda: parse_source_id("e-res-sm"), "expected a source id like"),
    (lambda: parse_source_id("3-res_jb"), "not a valid Neuronpedia source-set name"),
    (lambda: make_source_id(-1, "res"), "non-negative int"),
    (lambda: make_source_id(1, "res", "A B"), "suffix must be"),
    (lambda: nanochat_model_id(0), "positive int"),
    (lambda: source_id("blocks.3.hook_z", 1024), "kind one of"),
    (lambda: source_id("layer3", 1024), "blocks.{layer}.{kind}"),
    (lambda: source_set_name("blocks.3.hook_resid_post", 0), "d_sae must be a positive int"),
    (lambda: neuronpedia_id("GPT2", "6-res-jb"), "not a valid Neuronpedia model id"),
])
def test_bad_names_say_why(call, message):
    with pytest.raises(NeuronpediaNameError, match=message):
        call()


# --------------------------------------------------------------------------- payloads


def test_payloads_are_chunked_at_128_in_the_wire_shape():
    features = [feature(i, explanation="red things" if i == 0 else None) for i in range(300)]
    features[1].density = None
    payloads = upload_batch_payloads(MODEL, SOURCE, features)
    assert [len(p["features"]) for p in payloads] == [128, 128, 44]
    assert {p["modelId"] for p in payloads} == {MODEL} and {p["source"] for p in payloads} == {SOURCE}
    assert [f["index"] for p in payloads for f in p["features"]] == list(range(300))
    first, second = payloads[0]["features"][:2]
    assert first == {
        "index": 0, "density": 0.01, "explanations": [{"text": "red things"}],
        "topLogits": [{"token": " red", "value": 1.5}, {"token": " blue", "value": 0.9}],
        "bottomLogits": [{"token": " the", "value": -0.7}],
        "activations": [
            {"tokens": ["The", " red", " fox"], "values": [0.0, 2.0, 0.5], "quantileMin": -1.0, "quantileMax": 2.0},
            {"tokens": [" a", " red", " hat"], "values": [0.0, 1.0, 0.0], "quantileMin": 0.8, "quantileMax": 1.2,
             "quantileFraction": 0.002}]}
    assert "density" not in second and "explanations" not in second  # the server refuses null for these
    assert [len(p["features"]) for p in upload_batch_payloads(MODEL, SOURCE, features, chunk_size=100)] == \
        [100, 100, 100]
    json.dumps(payloads, allow_nan=False)


def test_torch_and_numpy_numbers_become_plain_json_numbers():
    values = torch.tensor([0.0, 1.5, 0.25])
    one = UploadFeature(torch.tensor(5), [UploadActivation(["a", "b", "c"], list(values), quantile_max=values.max())],
                        density=torch.tensor(0.125), top_logits=[(" a", values[1])])
    [payload] = upload_batch_payloads(MODEL, SOURCE, [one])
    wire = payload["features"][0]
    assert wire["index"] == 5 and type(wire["index"]) is int
    assert wire["activations"][0]["values"] == [0.0, 1.5, 0.25] and wire["density"] == 0.125
    assert json.loads(json.dumps(payload)) == payload


def breaking(change):
    features = [feature(i) for i in range(200)]
    change(features)
    return features


@pytest.mark.parametrize("change, path, message, status", [
    (lambda f: setattr(f[150].activations[0], "tokens", ["The", "", " fox"]), "features[150].activations[0].tokens[1]",
     "features[150].activations[0].tokens[1] is a required field", 400),
    (lambda f: setattr(f[3], "density", 1.5), "features[3].density",
     "features[3].density must be less than or equal to 1", 400),
    (lambda f: setattr(f[3], "index", -1), "features[3].index", "must be greater than or equal to 0", 400),
    (lambda f: setattr(f[3], "index", 10_000_001), "features[3].index", "less than or equal to 10000000", 400),
    (lambda f: setattr(f[3], "index", 2.5), "features[3].index", "must be an integer", 400),
    (lambda f: setattr(f[3], "top_logits", [(" x", 1.0)] * 21), "features[3].topLogits",
     "field must have less than or equal to 20 items", 400),
    (lambda f: setattr(f[3], "explanations", ["x" * 513]), "features[3].explanations[0].text",
     "must be at most 512 characters", 400),
    (lambda f: setattr(f[3].activations[1], "quantile_fraction", -1), "features[3].activations[1].quantileFraction",
     "must be greater than or equal to 0", 400),  # SAEDashboard's top group (bin_contains = -1) must not be sent
    (lambda f: setattr(f[3].activations[0], "tokens", ["a"] * 1025), "features[3].activations[0].tokens",
     "field must have less than or equal to 1024 items", 400),
    (lambda f: setattr(f[3], "activations", []), "features[3].activations", "field must have at least 1 items", 400),
    (lambda f: setattr(f[3].activations[0], "values", [0.0, "x", 1.0]), "features[3].activations[0].values[1]",
     "must be a `number` type", 400),
    (lambda f: setattr(f[3].activations[0], "values", [0.0, float("nan"), 1.0]),
     "features[3].activations[0].values[1]", "must be a `number` type", 400),
    (lambda f: setattr(f[140].activations[0], "values", [0.0, 1.0]), "features[140].activations[0]",
     "3 tokens but 2 values", 500),
    (lambda f: setattr(f[3], "density", float("inf")), "features[3].density", "less than or equal to 1", 400),
    (lambda f: setattr(f[3].activations[0], "values", [0.0, float("inf"), 1.0]),
     "features[3].activations[0].values[1]", "cannot be sent as JSON", 500),
    (lambda f: setattr(f[190], "index", 7), "features[190].index", "also features[7]'s", 500),
])
def test_payload_errors_name_the_field(change, path, message, status):
    with pytest.raises(NeuronpediaPayloadError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        upload_batch_payloads(MODEL, SOURCE, breaking(change))
    assert caught.value.path == path and caught.value.server_status == status


def test_payload_arguments_are_checked():
    with pytest.raises(ValueError, match="chunk_size must be an int in 1..128"):
        upload_batch_payloads(MODEL, SOURCE, [feature(0)], chunk_size=129)
    with pytest.raises(NeuronpediaNameError, match="model id"):
        upload_batch_payloads("Nanochat", SOURCE, [feature(0)])
    with pytest.raises(NeuronpediaNameError, match="expected a source id"):
        upload_batch_payloads(MODEL, SET, [feature(0)])
    with pytest.raises(NeuronpediaPayloadError, match="no features"):
        upload_batch_payloads(MODEL, SOURCE, [])


# --------------------------------------------------------------------------- reads


def test_fake_server_listens_on_localhost_only(server):
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server._server.server_address[0] == "127.0.0.1"


def test_get_feature_in_the_real_shape_without_a_key(server):
    anonymous = client(server, key=None)
    got = anonymous.get_feature("gpt2-small", "6-res-jb", 14057)
    assert got["index"] == "14057" and got["layer"] == "6-res-jb" and got["sourceSetName"] == "res-jb"
    assert [a["maxValue"] for a in got["activations"]] == sorted((a["maxValue"] for a in got["activations"]),
                                                                 reverse=True)
    assert got["activations"][0]["binMin"] == -1 and got["explanations"][0]["description"] == "military brigades"
    assert got["model"]["id"] == "gpt2-small" and got["source"]["id"] == "6-res-jb"
    assert got["sourceSet"]["name"] == "res-jb" and got["correlated_features_indices"] == []
    request = server.requests[-1]
    assert request.path == "/api/feature/gpt2-small/6-res-jb/14057" and "x-api-key" not in request.headers
    assert "gzip" in request.headers["accept-encoding"]  # and the fake's gzipped answer was read
    assert anonymous.limit_remaining == 24999  # x-limit-remaining of the /api limiter (25000 per hour)
    assert client(server, key="not-a-key").get_feature("gpt2-small", "6-res-jb", "14057")["index"] == "14057"


def test_missing_things_are_not_found(server):
    anonymous = client(server, key=None)
    with pytest.raises(NeuronpediaNotFound, match="available-resources") as caught:
        anonymous.get_feature("gpt2-small", "6-res-jb", 3)
    assert caught.value.status == 404 and set(caught.value.body) == {"error"}
    with pytest.raises(NeuronpediaNotFound) as caught:
        anonymous.get_feature("no-such-model", "6-res-jb", 3)
    assert set(caught.value.body) == {"error", "message"}  # the access check's ApiError carries both
    with pytest.raises(NeuronpediaNotFound, match="no source set 'nope' for model 'gpt2-small'") as caught:
        anonymous.get_source_set("gpt2-small", "nope")
    assert caught.value.status == 200  # the server answers `null`
    with pytest.raises(NeuronpediaNotFound):
        anonymous.get_activations("gpt2-small", "6-res-jb", 3)


def test_get_activations_sends_the_index_as_a_string(server):
    found = client(server, key=None).get_activations("gpt2-small", "6-res-jb", 14057)
    assert len(found) == 2 and found[0]["maxValue"] >= found[1]["maxValue"]
    assert server.requests[-1].body == {"modelId": "gpt2-small", "source": "6-res-jb", "index": "14057"}
    assert post_raw(server, "/activation/get", {"modelId": "gpt2-small", "source": "6-res-jb", "index": 14057}) == \
        (500, {"error": "Internal server error"})  # what a number does to the real route


def test_reads_retry_on_502_503_504_but_not_on_429(server):
    reader = client(server, key=None, attempts=3)
    server.answer_next(503, times=2)
    assert reader.get_feature("gpt2-small", "6-res-jb", 14057)["index"] == "14057"
    assert len(server.requests) == 3
    server.answer_next(502, times=3)
    with pytest.raises(NeuronpediaServerError, match="An error occurred with your deployment") as caught:
        reader.get_activations("gpt2-small", "6-res-jb", 14057)
    assert caught.value.status == 502 and len(server.requests) == 6
    with FakeNeuronpedia(rate_limits=[("/api/feature", 1)]) as limited:
        reader = client(limited, key=None)
        reader.get_feature("gpt2-small", "6-res-jb", 14057)
        with pytest.raises(NeuronpediaRateLimited, match="Rate limit exceeded") as caught:
            reader.get_feature("gpt2-small", "6-res-jb", 14057)
        assert len(limited.requests) == 2
    error = caught.value
    assert (error.status, error.endpoint, error.limit_per_window, error.window, error.remaining) == \
        (429, "/api/feature", 1, "60 m", 0)


def test_connection_errors_and_bad_answers(server):
    with FakeNeuronpedia() as gone:
        url = gone.base_url
    with pytest.raises(NeuronpediaConnectionError, match="no answer from http://127.0.0.1"):
        NeuronpediaClient(url, backoff=0, attempts=2, timeout=5).get_feature("gpt2-small", "6-res-jb", 1)
    server.answer_next(200, "<html>maintenance</html>")
    with pytest.raises(NeuronpediaInvalidResponse, match="expected JSON"):
        client(server).get_feature("gpt2-small", "6-res-jb", 14057)
    status, page = post_raw(server, "/no-such-route", {})
    assert status == 404 and "This page could not be found" in page


def test_base_url_and_key_handling(monkeypatch):
    assert NeuronpediaClient("http://127.0.0.1:9/api/").base_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="expected a base URL like"):
        NeuronpediaClient("ftp://example.org")
    monkeypatch.setenv("NEURONPEDIA_API_KEY", "from-env")
    from_env = NeuronpediaClient()
    assert from_env.api_key == "from-env" and "from-env" not in repr(from_env)
    monkeypatch.delenv("NEURONPEDIA_API_KEY")
    assert NeuronpediaClient().api_key is None


# --------------------------------------------------------------------------- writes


def test_writes_need_a_key_before_anything_is_sent(server):
    anonymous = client(server, key=None)
    for call in (lambda: anonymous.create_model(MODEL, 6), lambda: anonymous.create_source_set(MODEL, SET),
                 lambda: anonymous.upload_features(MODEL, SOURCE, [feature(0)])):
        with pytest.raises(NeuronpediaMissingApiKey, match="NEURONPEDIA_API_KEY"):
            call()
    assert server.requests == []
    with pytest.raises(NeuronpediaUnauthorized) as caught:
        client(server, key="wrong").create_model(MODEL, 6)
    assert caught.value.message == UNAUTHORIZED and caught.value.status == 401
    assert MODEL not in server.models


def test_model_and_source_set_creation(server):
    alice = client(server)
    model = alice.create_model(MODEL, 6, display_name="nanochat d6 (TinyWorld)")
    assert (model["id"], model["layers"], model["visibility"], model["creatorId"]) == (MODEL, 6, "UNLISTED",
                                                                                       "user-alice")
    with pytest.raises(NeuronpediaBadRequest, match="Model already exists") as caught:
        alice.create_model(MODEL, 6)
    assert caught.value.path is None
    created = alice.create_source_set(MODEL, SET, description="residual stream, 1k latents")
    assert created["name"] == SET and created["sources"] == []  # read back anonymously by the server
    assert [s["id"] for s in alice.get_source_set(MODEL, SET)["sources"]] == [f"{i}-{SET}" for i in range(6)]
    assert client(server, key=None).get_source_set(MODEL, SET)["sources"] == []  # UNLISTED: the creator's only
    with pytest.raises(NeuronpediaBadRequest, match="Source set name already exists for this model."):
        alice.create_source_set(MODEL, SET)
    with pytest.raises(NeuronpediaBadRequest, match="Model not found"):
        alice.create_source_set("nanochat-d99", SET)
    status, body = post_raw(server, "/model/new", {"id": "nanochat-d7", "layers": 300})
    assert (status, body) == (400, {"error": "Layers must be an integer less than 128", "path": "layers"})


def test_upload_and_read_back(server, alices_set):
    features = [feature(i, peak=1.0 + i, explanation="red things" if i == 5 else None) for i in range(200)]
    assert alices_set.upload_features(MODEL, SOURCE, features) == 200
    uploads = [r for r in server.requests if r.path == "/api/feature/upload-batch"]
    assert [len(r.body["features"]) for r in uploads] == [128, 72]
    assert all(r.headers["content-type"] == "application/json" and r.headers["x-api-key"] == ALICE for r in uploads)
    got = client(server, key=None).get_feature(MODEL, SOURCE, 5)
    assert got["frac_nonzero"] == 0.01 and got["maxActApprox"] == 6.0 and got["sourceSetName"] == SET
    assert got["pos_str"] == [" red", " blue"] and got["neg_values"] == [-0.7]
    assert [(a["binMin"], a["binMax"], a["binContains"]) for a in got["activations"]] == [(-1, 6.0, None),
                                                                                           (0.8, 1.2, 0.002)]
    assert got["activations"][0]["maxValueTokenIndex"] == 1 and got["activations"][0]["dataSource"] == "User alice"
    assert [e["description"] for e in got["explanations"]] == ["red things"]
    no_density = UploadFeature(500, [UploadActivation(["a"], [0.5])])
    alices_set.upload_features(MODEL, SOURCE, [no_density])
    assert client(server).get_feature(MODEL, SOURCE, 500)["frac_nonzero"] == -1  # the server's default


def test_uploading_again_duplicates_activations(server, alices_set):
    alices_set.upload_features(MODEL, SOURCE, [feature(1, density=0.01, explanation="red")])
    alices_set.upload_features(MODEL, SOURCE, [feature(1, density=0.5, explanation="red")])
    got = alices_set.get_feature(MODEL, SOURCE, 1)
    assert len(got["activations"]) == 4 and len(got["explanations"]) == 2
    assert got["frac_nonzero"] == 0.01  # the feature row keeps its first upload


def test_interrupted_upload_says_what_is_on_the_server():
    with FakeNeuronpedia(users={ALICE: "alice"}, rate_limits=[("/api/feature/upload-batch", 2)]) as server:
        alice = client(server)
        alice.create_model(MODEL, 6)
        alice.create_source_set(MODEL, SET)
        with pytest.raises(NeuronpediaUploadInterrupted, match="upload stopped after 256 features") as caught:
            alice.upload_features(MODEL, SOURCE, [feature(i) for i in range(300)])
        assert len([r for r in server.requests if r.path == "/api/feature/upload-batch"]) == 3  # 429 not retried
        assert len(server.neurons) == 1 + 256
    error = caught.value
    assert error.uploaded == list(range(256)) and error.remaining == list(range(256, 300))
    assert isinstance(error.cause, NeuronpediaRateLimited) and error.status == 429


def test_writes_are_never_retried(server, alices_set):
    server.answer_next(503)
    with pytest.raises(NeuronpediaServerError):
        alices_set.create_model("nanochat-d7", 7)
    assert "nanochat-d7" not in server.models and server.requests[-1].path == "/api/model/new"
    assert len([r for r in server.requests if r.path == "/api/model/new"]) == 2  # alices_set's own, and this one
    server.answer_next(503)
    with pytest.raises(NeuronpediaServerError) as caught:
        alices_set.upload_features(MODEL, SOURCE, [feature(0)])
    assert caught.value.status == 503 and len(server.neurons) == 1  # the seeded one; no retry
    assert len([r for r in server.requests if r.path == "/api/feature/upload-batch"]) == 1


def test_uploads_the_server_refuses(server, alices_set):
    bob = client(server, key=BOB)
    with pytest.raises(NeuronpediaServerError, match="Something went wrong on our end"):
        bob.upload_features(MODEL, SOURCE, [feature(0)])  # not the creator of the source set
    with pytest.raises(NeuronpediaServerError, match="Something went wrong on our end"):
        alices_set.upload_features(MODEL, f"9-{SET}", [feature(0)])  # the model has 6 layers
    with pytest.raises(NeuronpediaServerError):
        alices_set.upload_features(MODEL, "3-other-set", [feature(0)])
    assert len(server.neurons) == 1


def test_the_server_validates_what_the_client_checks(server, alices_set):
    """Raw payloads past the client: schema errors are 400 {error, path} with the same path and message as
    upload_schema_error; the later checks are opaque 500s."""
    [good] = upload_batch_payloads(MODEL, SOURCE, [feature(0), feature(1)])
    empty_token = json.loads(json.dumps(good))
    empty_token["features"][1]["activations"][0]["tokens"][2] = ""
    expected = upload_schema_error(empty_token)
    assert expected.path == "features[1].activations[0].tokens[2]"
    assert post_raw(server, "/feature/upload-batch", empty_token) == (400, {"error": expected.message,
                                                                           "path": expected.path})
    too_many = {**good, "features": [feature(i).to_json() for i in range(129)]}
    assert post_raw(server, "/feature/upload-batch", too_many) == \
        (400, {"error": "features field must have less than or equal to 128 items", "path": "features"})
    null_density = json.loads(json.dumps(good))
    null_density["features"][0]["density"] = None
    status, body = post_raw(server, "/feature/upload-batch", null_density)
    assert status == 400 and body["path"] == "features[0].density"
    opaque = {"error": "Something went wrong on our end. The error has been reported.",
              "message": "Something went wrong on our end. The error has been reported."}
    mismatch = json.loads(json.dumps(good))
    mismatch["features"][0]["activations"][0]["values"].append(1.0)
    duplicate = {**good, "features": [good["features"][0]] * 2}
    unknown_method = json.loads(json.dumps(good))
    unknown_method["features"][0]["explanations"] = [{"text": "red", "methodName": "my-method"}]
    for body in (mismatch, duplicate, unknown_method, b"{not json"):
        assert post_raw(server, "/feature/upload-batch", body) == (500, opaque)
    assert post_raw(server, "/feature/upload-batch", good, key="wrong") == (401, {"error": UNAUTHORIZED})
    assert len(server.neurons) == 1
    assert post_raw(server, "/feature/upload-batch", {**good, "modelId": MODEL.upper()}) == \
        (200, {"message": "2 features created."})  # the server lowercases ids


@pytest.mark.parametrize("status, text, error, message", [
    (400, '{"message": "query must be at least 3 characters"}', NeuronpediaBadRequest,
     "query must be at least 3 characters"),
    (403, '{"error": "not yours"}', NeuronpediaForbidden, "not yours"),
    (404, '{"error": "first", "message": "second"}', NeuronpediaNotFound, "first"),
    (405, "", NeuronpediaError, "HTTP 405"),
    (500, '{"error": "Failed to create features."}', NeuronpediaServerError, "Failed to create features."),
])
def test_errors_are_typed_and_read_error_then_message(server, status, text, error, message):
    server.answer_next(status, text)
    with pytest.raises(error) as caught:
        client(server).get_source_set(MODEL, SET)
    assert type(caught.value) is error and caught.value.message == message and caught.value.status == status
