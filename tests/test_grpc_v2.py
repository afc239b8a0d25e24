"""The Open Inference Protocol over gRPC as the stock client uses it (tritonclient.grpc, sync and
asyncio) against the session's real server (committed_server), plus one keyed server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tg_aio
from starlette.datastructures import State
from tritonclient.utils import InferenceServerException

from loadtests.server import metric_value
from service import grpc_v2
from service.settings import Settings
from tests.conftest import COMMITTED_MODELS, Server

TEXTS = ["A gorgeous, witty, seductive movie.", "A dull, lifeless film."]
GERMAN = ["Two dogs play in the snow.", "A woman sings."]


def _text(module: object, texts: list[str], datatype: str = "BYTES") -> tg.InferInput:
    array = np.array([[t.encode()] for t in texts], dtype=np.object_)
    tensor = module.InferInput("text", list(array.shape), datatype)  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(array)
    return tensor


def _v1(url: str, route: str, texts: list[str]) -> list[dict]:  # type: ignore[type-arg]
    return httpx.post(f"{url}/v1/{route}", json={"texts": texts}, timeout=60).json()["results"]


@pytest.fixture(scope="module")
def client(committed_server: Server) -> Iterator[tg.InferenceServerClient]:
    client = tg.InferenceServerClient(url=committed_server.grpc_url)
    yield client
    client.close()


def test_health_metadata_and_config(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    extensions = client.get_server_metadata(as_json=True)["extensions"]
    assert extensions == ["binary_tensor_data", "model_configuration", "parameters", "statistics"]
    for name in ("sentiment", "translate-en-de"):
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
        meta = client.get_model_metadata(name, as_json=True)
        assert meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1", "1"]}]
    # an unknown model or version is not ready (as Triton answers), not an error
    assert not client.is_model_ready("nope") and not client.is_model_ready("sentiment", "9")
    config = client.get_model_config("sentiment", as_json=True)["config"]
    assert config["max_batch_size"] == 64 and config["input"][0]["data_type"] == "TYPE_STRING"
    assert [o["data_type"] for o in config["output"]] == ["TYPE_STRING", "TYPE_FP32"]
    assert "dynamic_batching" in config


def test_both_models_answer_as_v1_does(client: tg.InferenceServerClient, committed_server: Server) -> None:
    before = metric_value(committed_server.url, "seqserve_grpc_requests_total", method="ModelInfer", code="OK")
    result = client.infer("sentiment", [_text(tg, TEXTS)], request_id="g1")
    assert result.get_response().id == "g1"
    v1 = _v1(committed_server.url, "sentiment", TEXTS)
    labels = [b.decode() for b in result.as_numpy("label").ravel()]
    assert labels == [r["label"] for r in v1] == ["positive", "negative"]
    assert result.as_numpy("probabilities")[:, 1] == pytest.approx([r["probabilities"]["positive"] for r in v1],
                                                                   abs=1e-6)
    result = client.infer("translate-en-de", [_text(tg, GERMAN)], outputs=[tg.InferRequestedOutput("translation")],
                          parameters={"beam_size": 2})
    v1 = httpx.post(f"{committed_server.url}/v1/translate", json={"texts": GERMAN, "beam_size": 2}, timeout=60)
    assert [b.decode() for b in result.as_numpy("translation").ravel()] == \
        [r["translation"] for r in v1.json()["results"]]
    after = metric_value(committed_server.url, "seqserve_grpc_requests_total", method="ModelInfer", code="OK")
    assert after - before == 2  # the HTTP series are left as they were


def test_statistics(client: tg.InferenceServerClient) -> None:
    client.infer("translate-en-de", [_text(tg, GERMAN[:1])])
    stats = client.get_inference_statistics("translate-en-de", as_json=True)["model_stats"]
    assert stats[0]["name"] == "translate-en-de" and int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    assert int(stats[0]["execution_count"]) > 0  # decoder steps


def test_asyncio_client(committed_server: Server) -> None:
    async def run() -> list[str]:
        async with tg_aio.InferenceServerClient(url=committed_server.grpc_url) as client:
            assert await client.is_model_ready("sentiment")
            results = await asyncio.gather(*[client.infer("sentiment", [_text(tg_aio, [t])]) for t in TEXTS * 4])
        return [r.as_numpy("label")[0, 0].decode() for r in results]

    assert asyncio.run(run()) == ["positive", "negative"] * 4


@pytest.mark.parametrize(("model", "texts", "datatype", "shape", "code", "words"), [
    ("nope", TEXTS, "BYTES", None, "StatusCode.NOT_FOUND", "unknown model nope"),
    ("nope", TEXTS, "FP32", None, "StatusCode.NOT_FOUND", "unknown model nope"),  # before the inputs' mistakes
    ("sentiment", TEXTS, "FP32", None, "StatusCode.INVALID_ARGUMENT", "datatype BYTES"),
    ("sentiment", TEXTS, "BYTES", [1, 2], "StatusCode.INVALID_ARGUMENT", "shape [N] or [N, 1]"),
    ("sentiment", ["ok", "  "], "BYTES", None, "StatusCode.INVALID_ARGUMENT", "inputs.text.data[1] is empty"),
    ("translate-en-de", [""], "BYTES", None, "StatusCode.INVALID_ARGUMENT", "inputs.text.data[0] is empty"),
])
def test_errors_are_status_codes(client: tg.InferenceServerClient, model: str, texts: list[str], datatype: str,
                                 shape: list[int] | None, code: str, words: str) -> None:
    tensor = _text(tg, texts)
    if datatype != "BYTES":
        tensor = tg.InferInput("text", [len(texts), 1], datatype)
        tensor.set_data_from_numpy(np.ones((len(texts), 1), dtype=np.float32))
    if shape is not None:
        tensor.set_shape(shape)
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [tensor])
    assert err.value.status() == code and words in err.value.message()


def test_an_error_echoing_a_long_input_keeps_its_status(client: tg.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.infer("m" * 20_000, [_text(tg, TEXTS)])  # the message names the model it did not find
    assert err.value.status() == "StatusCode.NOT_FOUND"  # not RESOURCE_EXHAUSTED from oversized trailers
    assert err.value.message().startswith("unknown model mmm") and len(err.value.message()) <= 1024


def test_a_message_over_the_body_limit_is_resource_exhausted(client: tg.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.infer("sentiment", [_text(tg, ["word " * 1000] * 300)])  # ~1.5 MB, over SEQSERVE_MAX_BODY_BYTES
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_ready()


def test_the_grpc_deadline_bounds_a_translation(client: tg.InferenceServerClient, committed_server: Server) -> None:
    def dropped() -> float:
        return sum(metric_value(committed_server.url, "seqserve_dropped_total", model="translate-en-de", reason=r)
                   for r in ("client_gone", "deadline"))

    before = dropped()
    long_text = " ".join(["A man in a red shirt is riding a bike down the street."] * 4)
    with pytest.raises(InferenceServerException) as err:
        client.infer("translate-en-de", [_text(tg, [long_text] * 16)], parameters={"beam_size": 10},
                     client_timeout=0.2)
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # the server gave up the work too, instead of decoding for nobody
    end = time.monotonic() + 10
    while dropped() < before + 16 and time.monotonic() < end:
        time.sleep(0.1)
    assert dropped() >= before + 16
    assert metric_value(committed_server.url, "seqserve_grpc_requests_total", method="ModelInfer",
                        code="DEADLINE_EXCEEDED") >= 1
    assert client.is_server_ready()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_grpc_port_in_use_is_a_clear_refusal(workers: str) -> None:
    """One line, before the models load (it was the lifespan's 30-line traceback after them). With
    workers, whose gRPC servers share the port by SO_REUSEPORT, a port that another server's
    workers hold the same way is taken too: a second deployment beside them started, and the
    kernel gave it half of their gRPC calls."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as another server's workers bind it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(COMMITTED_MODELS, grpc_port=str(port), warmup="false", workers=workers)
        assert server.proc.wait(timeout=60) == 3
    log = server.output()
    assert f"cannot listen on 127.0.0.1:{port} (gRPC, SEQSERVE_GRPC_PORT): [Errno 98]" in log
    assert "Traceback" not in log and "loaded" not in log


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Server]:
    server = Server(COMMITTED_MODELS, api_keys='["k1"]', warmup="false").wait_ready()
    yield server
    server.stop()


def test_api_keys_in_metadata(keyed_server: Server) -> None:
    client = tg.InferenceServerClient(url=keyed_server.grpc_url)
    assert client.is_server_ready()  # probes need no key, as on HTTP
    with pytest.raises(InferenceServerException) as err:
        client.infer("sentiment", [_text(tg, TEXTS[:1])])
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    for headers in ({"authorization": "Bearer k1"}, {"x-api-key": "k1"}):
        result = client.infer("sentiment", [_text(tg, TEXTS[:1])], headers=headers)
        assert result.as_numpy("label")[0, 0] == b"positive"
    assert metric_value(keyed_server.url, "seqserve_grpc_requests_total", method="ModelInfer",
                        code="UNAUTHENTICATED") == 1
    client.close()


def test_the_key_is_checked_before_the_message_is_parsed(keyed_server: Server) -> None:
    """As HTTP checks the head before the body: a caller without a key costs no protobuf parse. Bytes
    that are no ModelInferRequest get UNAUTHENTICATED without a key, and the parse error with one."""
    import grpc

    garbage = b"\xff" * 64  # field 31, wire type 7: no protobuf parser takes it
    with grpc.insecure_channel(keyed_server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as refused:
            call(garbage, metadata=(("x-request-id", "raw-1"),), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        trailers = dict(refused.value.trailing_metadata())  # type: ignore[attr-defined]
        assert '"code": "unauthorized"' in trailers["seqserve-error"] and trailers["x-request-id"] == "raw-1"
        with pytest.raises(grpc.RpcError) as unparsed:
            call(garbage, metadata=(("x-api-key", "k1"),), timeout=30)
        assert "Error parsing message" in unparsed.value.details()  # type: ignore[attr-defined]
        # nor read: one over the message limit (4 MiB here) is refused for its key, not for its size
        with pytest.raises(grpc.RpcError) as big:
            call(b"\0" * (5 << 20), timeout=30)
        assert big.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        # a path the server does not have is counted as "unknown", with or without a key: a caller
        # cannot grow the label set (nor pass for a health method under another service's name)
        for path in ("/x.Y/Random1", "/x.Y/ServerLive", "/nvidia.inferenceserver.GRPCInferenceService/ModelInfer"):
            with pytest.raises(grpc.RpcError) as unknown:
                channel.unary_unary(path)(b"", timeout=30)
            assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert metric_value(keyed_server.url, "seqserve_grpc_requests_total", method="ModelInfer",
                        code="UNAUTHENTICATED") >= 2
    assert metric_value(keyed_server.url, "seqserve_grpc_requests_total", method="unknown",
                        code="UNAUTHENTICATED") == 3
    assert metric_value(keyed_server.url, "seqserve_grpc_requests_total", method="Random1") == 0


def test_grpc_port_zero_turns_it_off() -> None:
    assert asyncio.run(grpc_v2.start(State(), Settings(grpc_port=0))) is None


def _stock_client(server: Server, protocol: str) -> tuple[object, Any]:
    """tritonclient's module and client for ``protocol``, "grpc" or "http"."""
    import tritonclient.http as th

    if protocol == "grpc":
        return tg, tg.InferenceServerClient(server.grpc_url)
    return th, th.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_stock_clients_timeout_counts_microseconds(committed_server: Server, protocol: str) -> None:
    """tritonclient's infer(..., timeout=) sends Triton's timeout parameter, in microseconds."""
    module, client = _stock_client(committed_server, protocol)
    long_text = " ".join(["A man in a red shirt is riding a bike down the street."] * 4)
    with pytest.raises(InferenceServerException) as err:  # 1 ms: gone before a beam-10 translation ends
        client.infer("translate-en-de", [_text(module, [long_text])], parameters={"beam_size": 10}, timeout=1_000)
    assert "deadline" in err.value.message()
    result = client.infer("sentiment", [_text(module, ["A fine film."])], timeout=10_000_000)  # 10 s
    assert result.as_numpy("label").ravel().tolist() == [b"positive"]


def test_a_sample_returns_the_seed_it_drew_in_the_response_parameters(client: tg.InferenceServerClient) -> None:
    params = {"sampling_topk": 20, "sampling_temperature": 1.5}
    first = client.infer("translate-en-de", [_text(tg, ["Two dogs play in the snow."])], parameters=params)
    seed = first.get_response().parameters["seed"].int64_param
    again = client.infer("translate-en-de", [_text(tg, ["Two dogs play in the snow."])],
                         parameters={**params, "seed": seed})
    assert again.as_numpy("translation").tolist() == first.as_numpy("translation").tolist()


def test_an_input_sent_both_typed_and_raw_is_refused(committed_server: Server) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="sentiment")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"A fine film.")
    request.raw_input_contents.append(len(b"Awful.").to_bytes(4, "little") + b"Awful.")
    with grpc.insecure_channel(committed_server.grpc_url) as channel, pytest.raises(grpc.RpcError) as err:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "send one" in (err.value.details() or "")


def test_values_in_another_datatypes_contents_are_named(committed_server: Server) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.fp32_contents.append(1.5)
    with grpc.insecure_channel(committed_server.grpc_url) as channel, pytest.raises(grpc.RpcError) as err:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "its values go in contents.bytes_contents, not contents.fp32_contents" in (err.value.details() or "")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_is_refused_not_ignored(committed_server: Server, protocol: str) -> None:
    """Triton's classification extension (class_count) is not served: a client asking for labels
    must not get raw scores in their place."""
    module, client = _stock_client(committed_server, protocol)
    output = module.InferRequestedOutput("probabilities", class_count=2)  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException) as err:
        client.infer("sentiment", [_text(module, ["A fine film."])], outputs=[output])
    assert "classification" in err.value.message()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_is_refused_by_name(committed_server: Server, protocol: str) -> None:
    """Triton's shared-memory extension is not served: an input in a region is refused as shared
    memory (not as an input without data), and an output asked for in a region is refused rather
    than answered inline to a client that reads its region."""
    module, client = _stock_client(committed_server, protocol)
    text = _text(module, ["A fine film."])
    in_region = _text(module, ["A fine film."])
    in_region.set_shared_memory("input_region", 64)  # type: ignore[attr-defined]
    output = module.InferRequestedOutput("probabilities")  # type: ignore[attr-defined]
    output.set_shared_memory("output_region", 8)

    def failures() -> int:  # refused while the request is read, before inference: counted all the same
        as_json = {"as_json": True} if protocol == "grpc" else {}
        stats = client.get_inference_statistics("sentiment", "1", **as_json)["model_stats"][0]
        return int(stats["inference_stats"]["fail"].get("count", 0))

    before = failures()
    for inputs, outputs, field in (([in_region], None, "inputs.text"), ([text], [output], "outputs.probabilities")):
        with pytest.raises(InferenceServerException) as err:
            client.infer("sentiment", inputs, outputs=outputs)
        assert f"{field}: shared memory is not supported" in err.value.message(), err.value.message()
        assert err.value.status() in ("422", "StatusCode.INVALID_ARGUMENT")
    assert failures() == before + 2
    with pytest.raises(InferenceServerException) as err:  # the extension's own calls
        client.register_system_shared_memory("input_region", "/input_region", 64)
    assert "shared memory is not supported" in err.value.message(), err.value.message()
    assert err.value.status() in ("404", "StatusCode.UNIMPLEMENTED")


def test_a_stream_answers_every_request_with_its_id_and_errors_in_the_stream(committed_server: Server) -> None:
    """tritonclient's start_stream / async_stream_infer (what perf_analyzer --streaming uses): each
    request answered on the stream, a failed one as an error in it, and the stream goes on."""
    import queue

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tg.InferenceServerClient(url=committed_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = {f"s{i}": text for i, text in enumerate(TEXTS * 3)}
    for request_id, text in sent.items():
        client.async_stream_infer("sentiment", [_text(tg, [text])], request_id=request_id)
    client.async_stream_infer("translate-en-de", [_text(tg, GERMAN[:1])], request_id="t0",
                              parameters={"beam_size": 2})
    client.async_stream_infer("sentiment", [_text(tg, [" "])], request_id="bad")
    client.async_stream_infer("nope", [_text(tg, TEXTS[:1])], request_id="missing")
    # a client written for decoupled models waits for the final flag on each request's last response
    client.async_stream_infer("sentiment", [_text(tg, TEXTS[:1])], request_id="final",
                              enable_empty_final_response=True)
    got = [answers.get(timeout=60) for _ in range(len(sent) + 4)]
    client.stop_stream()
    client.close()
    results = {r.get_response().id: r for r, e in got if e is None}
    errors = sorted(str(e) for r, e in got if e is not None)
    assert set(results) == {*sent, "t0", "final"}
    assert results["final"].get_response().parameters["triton_final_response"].bool_param
    assert results["s0"].get_response().parameters["triton_final_response"].bool_param  # each one's only answer
    for request_id, text in sent.items():
        assert results[request_id].as_numpy("label")[0, 0].decode() == _v1(committed_server.url, "sentiment",
                                                                            [text])[0]["label"]
    v1 = httpx.post(f"{committed_server.url}/v1/translate", json={"text": GERMAN[0], "beam_size": 2}, timeout=60)
    assert results["t0"].as_numpy("translation")[0, 0].decode() == v1.json()["translation"]
    assert len(errors) == 2 and "inputs.text.data[0] is empty" in errors[0] and "unknown model nope" in errors[1]
    assert metric_value(committed_server.url, "seqserve_grpc_requests_total", method="ModelStreamInfer",
                        code="INVALID_ARGUMENT") >= 1


def test_a_stream_needs_the_key(keyed_server: Server) -> None:
    import queue

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    for headers, expect in (({}, "UNAUTHENTICATED"), ({"x-api-key": "k1"}, None)):
        client = tg.InferenceServerClient(url=keyed_server.grpc_url)
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
        try:
            client.async_stream_infer("sentiment", [_text(tg, TEXTS[:1])])
        except InferenceServerException:  # the refusal came first: the stream had ended, its error is in the callback
            assert expect is not None
        result, error = answers.get(timeout=30)
        client.stop_stream()
        client.close()
        if expect is None:
            assert error is None and result.as_numpy("label")[0, 0] == b"positive"
        else:
            assert result is None and expect in str(error.status())
    # the refusal carries its error body as trailing metadata, as every other refusal does
    import grpc

    from service.grpc_protocol import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(keyed_server.grpc_url) as channel:
        stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([service_pb2.ModelInferRequest(model_name="sentiment")]))
        with pytest.raises(grpc.RpcError) as refused:
            next(stream)
    trailers = dict(refused.value.trailing_metadata())  # type: ignore[attr-defined]
    assert '"code": "unauthorized"' in trailers["seqserve-error"] and trailers["x-request-id"]
    with grpc.insecure_channel(keyed_server.grpc_url) as channel:  # a stream tells its id too
        stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([]), metadata=(("x-api-key", "k1"), ("x-request-id", "stream-7")))
        assert list(stream) == []
        assert dict(stream.trailing_metadata())["x-request-id"] == "stream-7"


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_translation_asked_with_stream_comes_in_pieces_flagged_final_at_the_end(committed_server: Server,
                                                                                   beam_size: int) -> None:
    """Triton's decoupled streaming, as tritonclient users of its LLM backends ask for it: the pieces
    concatenate to the unary answer, and only the last carries triton_final_response=true."""
    import queue

    sentence = "A little girl in a pink dress is running through the park with her dog."
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tg.InferenceServerClient(url=committed_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("translate-en-de", [_text(tg, [sentence])], request_id="t",
                              parameters={"stream": True, "beam_size": beam_size}, enable_empty_final_response=True)
    client.async_stream_infer("sentiment", [_text(tg, [sentence])], request_id="s", parameters={"stream": True},
                              enable_empty_final_response=True)
    pieces, hypotheses, errors, finals = [], [], [], 0
    while finals < 2:
        result, error = answers.get(timeout=60)
        if error is not None:
            errors.append(str(error))
            finals += 1
            continue
        response = result.get_response()
        assert response.id == "t"
        pieces.append(result.as_numpy("translation")[0, 0].decode())
        if "hypothesis" in response.parameters:
            hypotheses.append(response.parameters["hypothesis"].string_param)
        finals += response.parameters["triton_final_response"].bool_param
    client.stop_stream()
    unary = client.infer("translate-en-de", [_text(tg, [sentence])], parameters={"beam_size": beam_size})
    client.close()
    assert "".join(pieces) == unary.as_numpy("translation")[0, 0].decode()
    assert len(pieces) >= 2 and bool(hypotheses) == (beam_size > 1)  # partials at most every 50 ms
    assert errors == ["model sentiment does not generate text (task text-classification)"]


LONG = "A little girl in a pink dress is running through the park with her dog and a red ball."


def _answered(server: Server, sent: list[tuple[str, list[str], str, dict[str, Any]]], count: int) -> list[str]:
    """The first ``count`` answers on one stream of the stock client to the requests ``sent``
    (model, texts, request id, parameters), in the order they came: each its id, or its error."""
    import queue

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tg.InferenceServerClient(url=server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for model, texts, request_id, parameters in sent:
        client.async_stream_infer(model, [_text(tg, texts)], request_id=request_id, parameters=parameters or None)
    got = [answers.get(timeout=60) for _ in range(count)]
    client.stop_stream()
    client.close()
    return [result.get_response().id if error is None else f"error: {error}" for result, error in got]


def test_a_stream_answers_in_the_order_of_its_requests(committed_server: Server) -> None:
    """As Triton does: a stock client turns a failed request's answer into an error without its
    id, so the order is how it tells which request failed. Work still runs concurrently: a quick
    request behind a long one is answered after it, not computed after it."""
    order = _answered(committed_server, [
        ("translate-en-de", [LONG] * 8, "long", {"beam_size": 5}),
        ("sentiment", [" "], "empty", {}),
        ("sentiment", TEXTS[:1], "quick", {}),
        # a streamed translation refused before its first piece: that refusal is its one answer
        ("translate-en-de", TEXTS, "refused-stream", {"stream": True})], 4)
    assert order == ["long", "error: inputs.text.data[0] is empty", "quick",
                     "error: a streamed translation takes one text, not 2"]


def test_a_streamed_requests_first_piece_waits_for_the_requests_before_it(committed_server: Server) -> None:
    """Its later pieces go out as they come, but its first one keeps its place: a streamed greedy
    translation sent after a long beam search and a refusal came out before both, so a stock
    client counting first answers blamed the refusal on the wrong request."""
    order = _answered(committed_server, [
        ("translate-en-de", [LONG] * 8, "long", {"beam_size": 5}),
        ("translate-en-de", TEXTS[:1], "refused", {"stream": True, "num_hypotheses": 2}),
        ("translate-en-de", TEXTS[:1], "streamed", {"stream": True, "beam_size": 1})], 3)
    assert [o if not o.startswith("error") else "error" for o in order] == ["long", "error", "streamed"]


def test_a_streamed_requests_statistics_leave_out_its_wait_for_its_turn(committed_server: Server) -> None:
    """A quick request behind a long one on a stream waits for its turn to be answered; its time in
    the statistics (which perf_analyzer reads as the server's) was that wait too: 217 ms for a
    3 ms request behind a beam search of 8 sentences."""
    client = tg.InferenceServerClient(url=committed_server.grpc_url)

    def success(model: str) -> tuple[int, int]:
        stats = client.get_inference_statistics(model, "1", as_json=True)["model_stats"][0]["inference_stats"]
        return int(stats["success"].get("count", 0)), int(stats["success"].get("ns", 0))

    before = {model: success(model) for model in ("sentiment", "translate-en-de")}
    order = _answered(committed_server, [("translate-en-de", [LONG] * 8, "long", {"beam_size": 5}),
                                         ("sentiment", TEXTS[:1], "quick", {})], 2)
    assert order == ["long", "quick"]
    after = {model: success(model) for model in ("sentiment", "translate-en-de")}
    client.close()
    (quick_count, quick_ns), (long_count, long_ns) = (
        tuple(a - b for a, b in zip(after[m], before[m], strict=True)) for m in ("sentiment", "translate-en-de"))
    assert quick_count == long_count == 1
    assert quick_ns < long_ns / 2, (quick_ns, long_ns)


def test_a_request_after_a_streamed_one_waits_for_its_first_answer(committed_server: Server) -> None:
    """A streamed translation's first piece (or its refusal) keeps its place: a quick request sent
    after it was answered first, so a refusal of the streamed one, coming later, would have been
    blamed on the quick one by a client that counts answers."""
    order = _answered(committed_server, [("translate-en-de", [LONG], "streamed", {"stream": True, "beam_size": 5}),
                                         ("sentiment", TEXTS[:1], "quick", {})], 2)
    assert order == ["streamed", "quick"]


def test_a_stream_holds_a_bounded_number_of_requests_and_answers_them_all(committed_server: Server) -> None:
    """Past 64 requests in flight the server stops reading the stream (gRPC's flow control holds the
    client back) instead of keeping every message: all are answered, in order."""
    import queue

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tg.InferenceServerClient(url=committed_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(200):
        client.async_stream_infer("sentiment", [_text(tg, TEXTS[i % 2:i % 2 + 1])], request_id=str(i))
    got = [answers.get(timeout=60) for _ in range(200)]
    client.stop_stream()
    client.close()
    assert [result.get_response().id for result, error in got] == [str(i) for i in range(200)]


def test_a_request_over_the_body_limit_is_answered_in_the_stream_which_goes_on(committed_server: Server) -> None:
    """The transport reads up to 4 x MAX_BODY_BYTES: a request over the limit gets an error of its
    own, as HTTP's 413, where the transport's limit would end the stream and what it held."""
    import queue

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tg.InferenceServerClient(url=committed_server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("sentiment", [_text(tg, ["A fine film. " * 90_000])], request_id="big")
    client.async_stream_infer("sentiment", [_text(tg, TEXTS[:1])], request_id="after")
    got = [answers.get(timeout=60) for _ in range(2)]
    client.stop_stream()
    with pytest.raises(InferenceServerException) as err:  # unary: RESOURCE_EXHAUSTED, as before
        client.infer("sentiment", [_text(tg, ["A fine film. " * 90_000])])
    client.close()
    assert "over 1048576 bytes" in str(got[0][1]) and got[1][0].get_response().id == "after"
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"


def test_shutdown_ends_an_open_stream_once_its_requests_are_answered() -> None:
    """A client keeps its stream open while it runs: the server must not wait out its drain
    timeout for it, and what the stream held is answered first."""
    import queue

    server = Server(COMMITTED_MODELS, warmup="false", drain_timeout_s="30").wait_ready()
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tg.InferenceServerClient(url=server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("translate-en-de", [_text(tg, GERMAN * 4)], request_id="held",
                              parameters={"beam_size": 5})
    time.sleep(0.05)
    started = time.monotonic()
    assert server.stop() == 0
    took = time.monotonic() - started
    result, error = answers.get(timeout=10)
    client.stop_stream()
    client.close()
    assert error is None and result.get_response().id == "held"
    assert took < 15, took  # not the 30 s drain timeout


def test_a_client_leaving_a_stream_mid_way_leaves_no_errors_in_the_log(committed_server: Server) -> None:
    """Requests waiting for their turn behind a long one are cancelled with it: each lets the next
    go without an error of its own (asyncio logged "Task exception was never retrieved")."""
    def problems() -> int:
        log = committed_server.output()
        return log.count("never retrieved") + log.count("InvalidStateError") + log.count("Traceback")

    before = problems()
    client = tg.InferenceServerClient(url=committed_server.grpc_url)
    client.start_stream(callback=lambda result, error: None)
    client.async_stream_infer("translate-en-de", [_text(tg, GERMAN * 8)], parameters={"beam_size": 5})
    for _ in range(5):
        client.async_stream_infer("sentiment", [_text(tg, TEXTS[:1])])
    time.sleep(0.05)
    client.stop_stream(cancel_requests=True)
    client.close()
    time.sleep(1.0)  # the server notices, cancels and logs
    assert problems() == before, committed_server.output()[-3000:]


def test_an_unknown_method_is_unimplemented_counted_and_logged_with_its_path() -> None:
    """Triton's older package name (nvidia.inferenceserver) or a typo: gRPC's own UNIMPLEMENTED left
    no trace in the metrics or the log. The label is "unknown" whatever the path, so that clients
    cannot grow the label set."""
    import json

    import grpc

    server = Server(COMMITTED_MODELS, warmup="false", access_log="true").wait_ready()
    try:
        with grpc.insecure_channel(server.grpc_url) as channel:
            for path in ("/nvidia.inferenceserver.GRPCInferenceService/ModelInfer",
                         "/inference.GRPCInferenceService/X"):
                with pytest.raises(grpc.RpcError) as refused:
                    channel.unary_unary(path)(b"", metadata=(("x-request-id", "old-1"),), timeout=30)
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
                assert path in refused.value.details()  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as streamed:  # a stream of the old package's, too
                list(channel.stream_stream("/nvidia.inferenceserver.GRPCInferenceService/ModelStreamInfer")(
                    iter([b""]), timeout=30))
            assert streamed.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        assert metric_value(server.url, "seqserve_grpc_requests_total", method="unknown", code="UNIMPLEMENTED") == 3
        time.sleep(0.2)
        lines = [json.loads(line) for line in server.output().splitlines() if '"method":"unknown"' in line]
    finally:
        server.stop()
    assert [e["path"] for e in lines][:2] == ["/nvidia.inferenceserver.GRPCInferenceService/ModelInfer",
                                              "/inference.GRPCInferenceService/X"]
    assert lines[0]["request_id"] == "old-1" and lines[0]["status"] == 501


def test_a_calls_access_log_line_has_the_http_lines_fields_and_types() -> None:
    """A log index types a field by its first value: "status" was "OK" for gRPC where HTTP logs 200,
    and a gRPC line had no request id to follow a request by."""
    import json

    server = Server(COMMITTED_MODELS, warmup="false", access_log="true").wait_ready()
    try:
        client = tg.InferenceServerClient(url=server.grpc_url)
        client.infer("sentiment", [_text(tg, TEXTS[:1])], request_id="mine-1")
        with pytest.raises(InferenceServerException):
            client.infer("nobody", [_text(tg, TEXTS[:1])], headers={"x-request-id": "meta-2"})
        # a proxy's id in the metadata wins over the body's, as HTTP's header does
        client.infer("sentiment", [_text(tg, TEXTS[:1])], request_id="body-3", headers={"x-request-id": "meta-3"})
        client.is_server_live()
        client.close()
        # the id comes back in the trailing metadata, the server's own where the client sent none
        import grpc

        from service.grpc_protocol import service_pb2, service_pb2_grpc

        with grpc.insecure_channel(server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            _, call = stub.ServerMetadata.with_call(service_pb2.ServerMetadataRequest())
            generated = dict(call.trailing_metadata())["x-request-id"]
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nobody"), metadata=(("x-request-id", "m4"),))
            assert dict(refused.value.trailing_metadata())["x-request-id"] == "m4"  # type: ignore[attr-defined]
        time.sleep(0.2)
        lines = [json.loads(line) for line in server.output().splitlines() if '"protocol":"grpc"' in line]
    finally:
        server.stop()
    found = {(e["method"], e["request_id"], e["status"], e["grpc_status"]) for e in lines}
    assert ("ModelInfer", "mine-1", 200, "OK") in found and ("ModelInfer", "meta-2", 404, "NOT_FOUND") in found
    assert ("ModelInfer", "meta-3", 200, "OK") in found and ("ServerMetadata", generated, 200, "OK") in found
    assert all(isinstance(e["status"], int) and e["request_id"] for e in lines)
