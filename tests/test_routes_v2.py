"""The Open Inference Protocol over HTTP as the stock client uses it (tritonclient.http, sync and
asyncio): binary tensors (its default) and JSON, both models, metadata, configuration, errors.
One real server for the whole session (committed_server)."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
import tritonclient.http.aio as tc_aio
from tritonclient.utils import InferenceServerException

from tests.conftest import Server

TEXTS = ["A gorgeous, witty, seductive movie.", "A dull, lifeless film."]
GERMAN = ["Two dogs play in the snow.", "A woman sings."]


def _text(module: object, texts: list[str], binary: bool, datatype: str = "BYTES") -> tc.InferInput:
    array = np.array([[t.encode()] for t in texts], dtype=np.object_)
    tensor = module.InferInput("text", list(array.shape), datatype)  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _strings(array: np.ndarray) -> list[str]:
    """BYTES elements: bytes when they came binary, str when they came as JSON (the client's way)."""
    return [x.decode() if isinstance(x, bytes) else x for x in array.ravel()]


def _v1(url: str, route: str, texts: list[str]) -> list[dict]:  # type: ignore[type-arg]
    return httpx.post(f"{url}/v1/{route}", json={"texts": texts}, timeout=60).json()["results"]


@pytest.fixture(scope="module")
def client(committed_server: Server) -> tc.InferenceServerClient:
    return tc.InferenceServerClient(url=committed_server.url.removeprefix("http://"), network_timeout=60)


def test_server_and_model_metadata(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_configuration", "parameters",
                                                                 "statistics"]
    for name in ("sentiment", "translate-en-de"):
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
        meta = client.get_model_metadata(name)
        assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    outputs = {o["name"]: o for o in client.get_model_metadata("sentiment")["outputs"]}
    assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}


def test_model_configuration_in_tritons_form(client: tc.InferenceServerClient) -> None:
    config = client.get_model_config("sentiment")
    assert config == client.get_model_config("sentiment", "1")
    assert config["name"] == "sentiment" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("label", "TYPE_STRING", [1]), ("probabilities", "TYPE_FP32", [2])]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    translator = client.get_model_config("translate-en-de")
    assert translator["output"] == [{"name": "translation", "data_type": "TYPE_STRING", "dims": [1]},
                                    {"name": "hypotheses", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert translator["parameters"]["max_beam_size"]["string_value"] == "10"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_both_models_answer_as_v1_does(client: tc.InferenceServerClient, committed_server: Server,
                                       binary: bool) -> None:
    outputs = None if binary else [tc.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")]
    result = client.infer("sentiment", [_text(tc, TEXTS, binary)], outputs=outputs, request_id="r1")
    response = result.get_response()
    assert response["id"] == "r1" and response["model_version"] == "1"
    assert all(("parameters" in o) == binary for o in response["outputs"])
    v1 = _v1(committed_server.url, "sentiment", TEXTS)
    labels = _strings(result.as_numpy("label"))
    assert labels == [r["label"] for r in v1] == ["positive", "negative"]
    assert result.as_numpy("label").shape == (2, 1)
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (2, 2)
    assert probs[:, 1] == pytest.approx([r["probabilities"]["positive"] for r in v1], abs=1e-6)

    outputs = [tc.InferRequestedOutput("translation", binary_data=binary)]
    result = client.infer("translate-en-de", [_text(tc, GERMAN, binary)], outputs=outputs)
    assert _strings(result.as_numpy("translation")) == \
        [r["translation"] for r in _v1(committed_server.url, "translate", GERMAN)]


def test_one_requested_output_and_decoding_parameters(client: tc.InferenceServerClient) -> None:
    result = client.infer("sentiment", [_text(tc, TEXTS[:1], True)], outputs=[tc.InferRequestedOutput("label")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    greedy = client.infer("translate-en-de", [_text(tc, GERMAN[:1], True)], parameters={"beam_size": 1})
    assert greedy.as_numpy("translation")[0, 0].decode()


def test_statistics_in_tritons_schema(client: tc.InferenceServerClient) -> None:
    before = client.get_inference_statistics("sentiment")["model_stats"][0]
    client.infer("sentiment", [_text(tc, TEXTS, True)])
    with pytest.raises(InferenceServerException):
        client.infer("sentiment", [_text(tc, ["  "], True)])
    stats = client.get_inference_statistics("sentiment", "1")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("sentiment", "1")]
    after = stats[0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    assert after["inference_count"] >= before["inference_count"] + 2
    assert after["execution_count"] > before["execution_count"]
    assert after["inference_stats"]["queue"]["ns"] > before["inference_stats"]["queue"]["ns"]
    assert after["last_inference"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} == {"sentiment", "translate-en-de"}
    translator = client.get_inference_statistics("translate-en-de")["model_stats"][0]
    client.infer("translate-en-de", [_text(tc, GERMAN[:1], True)], parameters={"beam_size": 1})
    decoded = client.get_inference_statistics("translate-en-de")["model_stats"][0]
    compute = decoded["inference_stats"]["compute_infer"]
    compute_before = translator["inference_stats"]["compute_infer"]
    assert compute["count"] > compute_before["count"] and compute["ns"] > compute_before["ns"]  # its decoder steps
    with pytest.raises(InferenceServerException) as err:
        client.get_inference_statistics("nope")
    assert err.value.status() == "404"


def test_asyncio_client(committed_server: Server) -> None:
    async def run() -> tuple[list[str], list[str]]:
        client = tc_aio.InferenceServerClient(url=committed_server.url.removeprefix("http://"))
        try:
            assert await client.is_server_ready()
            assert (await client.get_model_config("translate-en-de"))["max_batch_size"] == 64
            sentiment, translation = await asyncio.gather(
                client.infer("sentiment", [_text(tc_aio, TEXTS, True)]),
                client.infer("translate-en-de", [_text(tc_aio, GERMAN, False)],
                             outputs=[tc_aio.InferRequestedOutput("translation", binary_data=False)]))
        finally:
            await client.close()
        return _strings(sentiment.as_numpy("label")), _strings(translation.as_numpy("translation"))

    labels, german = asyncio.run(run())
    assert labels == ["positive", "negative"]
    assert german == [r["translation"] for r in _v1(committed_server.url, "translate", GERMAN)]


@pytest.mark.parametrize(("model", "texts", "datatype", "shape", "status", "words"), [
    ("nope", TEXTS, "BYTES", None, "404", "unknown model nope"),
    ("sentiment", TEXTS, "FP32", None, "422", "datatype BYTES"),
    ("sentiment", TEXTS, "BYTES", [1, 2], "422", "shape [N] or [N, 1]"),
    ("sentiment", ["ok", "  "], "BYTES", None, "422", "inputs.text.data[1] is empty"),
    ("translate-en-de", [""], "BYTES", None, "422", "inputs.text.data[0] is empty"),
])
def test_errors_reach_the_client(client: tc.InferenceServerClient, model: str, texts: list[str], datatype: str,
                                 shape: list[int] | None, status: str, words: str) -> None:
    tensor = _text(tc, texts, True)
    if datatype != "BYTES":
        tensor = tc.InferInput("text", [len(texts), 1], datatype)
        tensor.set_data_from_numpy(np.ones((len(texts), 1), dtype=np.float32))
    if shape is not None:
        tensor.set_shape(shape)
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [tensor])
    assert err.value.status() == status and words in err.value.message()


def test_a_body_without_content_type_is_json(committed_server: Server) -> None:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXTS[0]]}]}
    r = httpx.post(f"{committed_server.url}/v2/models/sentiment/infer", content=json.dumps(body).encode())
    assert "content-type" not in r.request.headers
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["positive"]}
    # a UTF-8 byte order mark first (Windows tools write one; RFC 8259 lets a parser ignore it)
    for path, raw in (("/v2/models/sentiment/infer", json.dumps(body)), ("/v1/sentiment", '{"text": "Great."}')):
        r = httpx.post(f"{committed_server.url}{path}", content=b"\xef\xbb\xbf" + raw.encode())
        assert r.status_code == 200, (path, r.text)


def test_binary_body_mistakes_are_named(committed_server: Server) -> None:
    header = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 50}}]}).encode()
    url = f"{committed_server.url}/v2/models/sentiment/infer"
    r = httpx.post(url, content=header + b"\x05\x00\x00\x00hello",
                   headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 422 and r.json()["field"] == "inputs.text.parameters.binary_data_size", r.text
    r = httpx.post(url, content=header, headers={"Inference-Header-Content-Length": str(len(header) + 5)})
    assert r.status_code == 422 and r.json()["field"] == "Inference-Header-Content-Length"
    r = httpx.post(url, content=json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                        "data": ["x"]}], "outputs": [{"name": "nope"}]}))
    assert r.status_code == 422 and r.json()["field"] == "outputs" and r.json()["limit"] == ["label", "probabilities"]
    # both forms of one input: which would count is not for the client to guess (gRPC refuses it too)
    both = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"],
                                   "parameters": {"binary_data_size": 9}}]}).encode()
    r = httpx.post(url, content=both + b"\x05\x00\x00\x00hello",
                   headers={"Inference-Header-Content-Length": str(len(both))})
    assert r.status_code == 422 and r.json()["field"] == "inputs.text.data" and "send one" in r.json()["error"]
    # null, which the OpenAPI document does not allow, was taken for no size at all
    null = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"],
                        "parameters": {"binary_data_size": None}}]}
    r = httpx.post(url, json=null)
    assert r.status_code == 422 and r.json()["field"] == "inputs.text.parameters.binary_data_size", r.text


@pytest.mark.parametrize(("body", "field"), [
    ({"parameters": {"binary_data_output": "yes"}}, "parameters.binary_data_output"),
    ({"parameters": {"binary_data_output": 1}}, "parameters.binary_data_output"),
    ({"outputs": [{"name": "label", "parameters": {"binary_data": "no"}}]}, "outputs.label.parameters.binary_data"),
])
def test_binary_flags_must_be_booleans(committed_server: Server, body: dict, field: str) -> None:  # type: ignore[type-arg]
    """Any value was read as Python reads it: the string "no" answered in binary. Triton refuses a
    non-boolean; so does seqserve, before the work is queued."""
    text = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Fine."]}]}
    r = httpx.post(f"{committed_server.url}/v2/models/sentiment/infer", json={**text, **body})
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    for flag in (True, False, None):
        r = httpx.post(f"{committed_server.url}/v2/models/sentiment/infer",
                       json={**text, "parameters": {"binary_data_output": flag}})
        assert r.status_code == 200 and ("inference-header-content-length" in r.headers) == bool(flag)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_the_stock_clients_compressed_requests_are_answered(client: tc.InferenceServerClient, algorithm: str) -> None:
    plain = client.infer("sentiment", [_text(tc, TEXTS, True)])
    packed = client.infer("sentiment", [_text(tc, TEXTS, True)], request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    assert _strings(packed.as_numpy("label")) == _strings(plain.as_numpy("label"))
    assert np.array_equal(packed.as_numpy("probabilities"), plain.as_numpy("probabilities"))


def test_a_sample_returns_the_seed_it_drew(committed_server: Server) -> None:
    """As v1 does: the seed a sample drew when the request gave none comes back (v2 infer in the
    response's parameters, generate beside its text), and it repeats the sample."""
    url = f"{committed_server.url}/v2/models/translate-en-de"
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [GERMAN[0]]}],
            "parameters": {"sampling_topk": 20, "sampling_temperature": 1.5}}
    first = httpx.post(f"{url}/infer", json=body, timeout=30).json()
    seed = first["parameters"]["seed"]
    again = httpx.post(f"{url}/infer", json={**body, "parameters": {**body["parameters"], "seed": seed}}, timeout=30)
    assert again.json()["outputs"] == first["outputs"] and again.json()["parameters"] == {"seed": seed}
    plain = httpx.post(f"{url}/infer", json={"inputs": body["inputs"]}, timeout=30).json()
    assert "parameters" not in plain  # nothing drawn, nothing to return
    generated = httpx.post(f"{url}/generate", json={"text_input": GERMAN[0], "sampling_topk": 20,
                                                    "sampling_temperature": 1.5, "seed": seed}, timeout=30).json()
    assert generated["seed"] == seed and generated["text_output"] == first["outputs"][0]["data"][0]
    stream = httpx.post(f"{url}/generate_stream", json={"text_input": GERMAN[0], "sampling_topk": 20}, timeout=30)
    assert isinstance(json.loads(stream.text.strip().split("\n\n")[-1].removeprefix("data: "))["seed"], int)
