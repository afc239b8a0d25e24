"""Model control (service/repository.py) on a real server, driven by the stock tritonclient:
a second sentiment version loaded and unloaded while 64 clients keep sending."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as tg
import tritonclient.http as tc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from loadtests.server import metric_value
from service.errors import ModelControlRefused
from service.repository import ModelControl
from service.settings import Settings
from tests.conftest import COMMITTED_MODELS, Server

GAUGES = ("seqserve_queue_depth", "seqserve_in_flight", "seqserve_queue_limit", "seqserve_model_healthy",
          "seqserve_model_info")
BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["A gorgeous, witty movie."]}]}


def _add_version(repo: Path, version: str, card_version: str | None = None) -> Path:
    """A copy of sentiment/1 as another version (its files linked, its model.json rewritten)."""
    source, target = COMMITTED_MODELS / "sentiment" / "1", repo / "sentiment" / version
    target.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "model.json":
            (target / f.name).symlink_to(f.resolve())
    card = json.loads((source / "model.json").read_text())
    card["version"] = card_version or version
    (target / "model.json").write_text(json.dumps(card))
    return target


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    (repo / "sentiment").mkdir()
    (repo / "sentiment" / "1").symlink_to((COMMITTED_MODELS / "sentiment" / "1").resolve())
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Server]:
    server = Server(repo, model_control="true").wait_ready()
    yield server
    server.stop()


class Clients:
    """``n`` clients sending unversioned v2 requests back to back until stopped, in their own loop."""

    def __init__(self, url: str, n: int) -> None:
        self.url, self.n = url, n
        self.answers: list[tuple[float, float, int, str]] = []  # (sent, answered, status, version)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    async def _run(self) -> None:
        # idle connections are dropped well before uvicorn closes them (5 s), so that a request never
        # races the server's close of a kept-alive connection
        async with httpx.AsyncClient(base_url=self.url, timeout=30,
                                     limits=httpx.Limits(max_connections=self.n, keepalive_expiry=2)) as client:
            async def one() -> None:
                while not self._stop.is_set():
                    sent = time.monotonic()
                    try:
                        r = await client.post("/v2/models/sentiment/infer", json=BODY)
                    except httpx.HTTPError as exc:  # counted as status 0: the test fails on it
                        self.answers.append((sent, time.monotonic(), 0, repr(exc)))
                        continue
                    version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                    self.answers.append((sent, time.monotonic(), r.status_code, version))

            await asyncio.gather(*[one() for _ in range(self.n)])

    def __enter__(self) -> Clients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def sent_between(self, start: float, end: float) -> list[str]:
        """Versions that answered the requests sent in [start, end) and answered before ``end``."""
        return [v for sent, done, _, v in self.answers if start <= sent and done < end]

    def wait_for_requests_sent_after(self, start: float, count: int = 20, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while len(self.sent_between(start, float("inf"))) < count and time.monotonic() < end:
            time.sleep(0.05)


def test_load_and_unload_a_second_version_under_load(server: Server, repo: Path) -> None:
    http = tc.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = tg.InferenceServerClient(server.grpc_url)
    assert http.get_server_metadata()["extensions"][-1] == "model_repository"
    assert http.get_model_repository_index() == [{"name": "sentiment", "version": "1", "state": "READY"}]
    v2 = _add_version(repo, "2")
    assert http.get_model_repository_index()[1] == {"name": "sentiment", "version": "2", "state": "UNAVAILABLE",
                                                    "reason": "unloaded"}
    with Clients(server.url, 64) as clients:
        clients.wait_for_requests_sent_after(time.monotonic())
        http.load_model("sentiment")  # returns once version 2 is loaded, warmed up and serving
        loaded = time.monotonic()
        clients.wait_for_requests_sent_after(loaded)
        assert http.get_model_metadata("sentiment")["versions"] == ["1", "2"]
        # the per-model series tell the versions apart (none renamed: a model label alone sums them)
        time.sleep(0.3)
        by_version = {v: metric_value(server.url, "seqserve_batch_size_count", model="sentiment", version=v)
                      for v in ("1", "2")}
        assert by_version["1"] > 0 and by_version["2"] > 0, by_version
        assert metric_value(server.url, "seqserve_batch_size_count", model="sentiment") >= sum(by_version.values())
        stats = http.get_inference_statistics("sentiment", "2")["model_stats"][0]
        assert stats["version"] == "2" and int(stats["execution_count"]) > 0
        shutil.rmtree(v2)
        unloading = time.monotonic()
        grpc.load_model("sentiment")  # the folder is gone: version 2 stops taking requests, drains, is freed
        unloaded = time.monotonic()
        clients.wait_for_requests_sent_after(unloaded)
    statuses = [s for _, _, s, _ in clients.answers]
    assert set(statuses) == {200}, [a for a in clients.answers if a[2] != 200][:3]
    # unversioned requests go to the highest version as soon as it serves, and back when it is gone
    assert set(clients.sent_between(loaded, unloading)) == {"2"}
    assert set(clients.sent_between(unloaded, float("inf"))) == {"1"}
    print(f"{len(statuses)} requests, all 200; {clients.sent_between(0, unloading).count('2')} answered by version 2")
    index = grpc.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["version"], m["state"]) for m in index] == [("sentiment", "1", "READY")]
    r = httpx.post(f"{server.url}/v2/models/sentiment/versions/2/infer", json=BODY)
    assert r.status_code == 404 and r.json()["code"] == "model_not_found"
    grpc.close()


def test_a_broken_version_is_refused_naming_its_file(server: Server, repo: Path) -> None:
    bad = _add_version(repo, "3", card_version="1")  # model.json says version 1
    try:
        r = httpx.post(f"{server.url}/v2/repository/models/sentiment/load", timeout=60)
        assert r.status_code == 409 and r.json()["code"] == "model_load_failed"
        assert str(bad / "model.json") in r.json()["error"]
        assert httpx.post(f"{server.url}/v2/models/sentiment/infer", json=BODY).status_code == 200
        # the index says why the version is not served (as Triton's does), not "unloaded"
        row = next(row for row in httpx.post(f"{server.url}/v2/repository/index").json() if row["version"] == "3")
        assert row["state"] == "UNAVAILABLE" and row["reason"].startswith("load failed: ")
        assert str(bad / "model.json") in row["reason"]
        assert server.wait_for_output("seqserve.repository loading sentiment/3 failed, the versions already "
                                      "served keep serving: ")  # the access line was its only trace
    finally:
        shutil.rmtree(bad)
    r = httpx.post(f"{server.url}/v2/repository/models/sentiment/load", json={"parameters": {"config": "{}"}})
    assert r.status_code == 422 and r.json()["field"] == "parameters"
    r = httpx.post(f"{server.url}/v2/repository/models/nope/load")
    assert r.status_code == 404


def test_a_name_that_is_not_one_folder_name_is_refused_and_loads_nothing(server: Server) -> None:
    loaded_before = server.output().count("serving sentiment/")
    for name in ("*", "%2A", "sent%3Fment", "%2E%2E"):  # a glob would have matched every model
        r = httpx.post(f"{server.url}/v2/repository/models/{name}/load", timeout=60)
        assert r.status_code == 422 and r.json()["field"] == "model", (name, r.text)
    with pytest.raises(InferenceServerException) as err:
        tg.InferenceServerClient(server.grpc_url).load_model("../sentiment")
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert server.output().count("serving sentiment/") == loaded_before
    for parameters in (5, [1], "config"):
        r = httpx.post(f"{server.url}/v2/repository/models/sentiment/load", json={"parameters": parameters})
        assert r.status_code == 422 and r.json()["field"] == "parameters", r.text


def test_a_body_that_is_not_json_is_a_422_however_deep(server: Server) -> None:
    """1,500 nested brackets were a 500 and a RecursionError traceback (json.loads), on the index
    route too, which answers in any mode."""
    for path in ("index", "models/sentiment/load", "models/sentiment/unload"):
        for body in (b"[" * 1500, b'{"ready": ', b'"\\ud800"'):
            r = httpx.post(f"{server.url}/v2/repository/{path}", content=body, timeout=60)
            assert r.status_code == 422 and r.json()["field"] == "body", (path, body[:20], r.text)
    assert "Traceback" not in server.output()


def test_an_unload_whose_caller_leaves_mid_drain_still_closes_the_version() -> None:
    from types import SimpleNamespace

    class Engine:
        closed = False

        async def drain(self, timeout_s: float) -> bool:
            await asyncio.sleep(0.2)  # requests still finishing
            return True

        async def close(self) -> None:
            self.closed = True

    model = SimpleNamespace(name="m", version="1", engine=Engine())
    served = [model]
    registry = SimpleNamespace(versions=lambda name: list(served), remove=served.remove)
    control = ModelControl(registry, Settings(model_control=True, warmup=False))  # type: ignore[arg-type]

    async def scenario() -> None:
        caller = asyncio.create_task(control.unload("m"))
        await asyncio.sleep(0.05)
        caller.cancel()  # a gRPC deadline passes, or the server shuts down
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert served == [] and not model.engine.closed
        await control.finish()  # what the shutdown awaits
        assert model.engine.closed

    asyncio.run(scenario())


def test_an_unloaded_versions_memory_is_given_back_once_it_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its engine, batcher and runner refer to one another: only a full collection frees them, and
    glibc kept the freed memory (a soak: +5.6 MB resident per load/unload cycle, for good). Both
    are done once the unload is over (tests/test_memory.py: what the call does)."""
    from types import SimpleNamespace

    from service import repository

    returned: list[bool] = []
    monkeypatch.setattr(repository, "RETURN_MEMORY_AFTER_S", 0.01)
    monkeypatch.setattr(repository, "return_freed_memory", lambda: returned.append(True) or True)

    class Engine:
        async def drain(self, timeout_s: float) -> bool:
            return True

        async def close(self) -> None:
            pass

    served = [SimpleNamespace(name="m", version="1", engine=Engine())]
    registry = SimpleNamespace(versions=lambda name: list(served), remove=served.remove)
    control = ModelControl(registry, Settings(model_control=True, warmup=False))  # type: ignore[arg-type]

    async def scenario() -> None:
        await control.unload("m")
        assert not returned  # not before its caller's references are gone
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert returned == [True]


def test_a_version_loaded_later_gives_way_to_the_event_loop_as_the_first_ones(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    started_with: list[object] = []
    engine = SimpleNamespace(start=started_with.append)
    monkeypatch.setattr("service.repository.load_model",
                        lambda card, providers, settings: SimpleNamespace(name="sentiment", version="1", engine=engine))
    added: list[object] = []

    def give_way() -> float:
        return 0.0

    registry = SimpleNamespace(versions=lambda name: [], add=added.append, providers=[], give_way=give_way)
    control = ModelControl(registry, Settings(model_repository=repo, model_control=True))  # type: ignore[arg-type]
    asyncio.run(control.load("sentiment"))
    assert started_with == [give_way] and len(added) == 1


def test_unload_then_load_again(server: Server) -> None:
    def documented() -> bool:  # the OpenAPI document spells v2 inference out per served model
        return "/v2/models/sentiment/infer" in httpx.get(f"{server.url}/openapi.json").json()["paths"]

    def state() -> dict[str, list[float]]:  # the version's gauges in /metrics: a version's state, not its history
        found: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name in GAUGES and (labels.get("model"), labels.get("version")) == ("sentiment", "1"):
                    found.setdefault(sample.name, []).append(sample.value)
        return found

    client = tc.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = tg.InferenceServerClient(server.grpc_url)
    assert documented()
    assert state() == {**{name: [0.0] for name in GAUGES}, "seqserve_queue_limit": [1024.0],
                       "seqserve_model_healthy": [1.0], "seqserve_model_info": [1.0]}
    grpc.unload_model("sentiment")  # over gRPC: the document follows whichever transport changed it
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("sentiment")
    assert err.value.status() == "404"
    assert client.get_model_repository_index()[0]["state"] == "UNAVAILABLE"
    assert not documented()
    # unloaded: no queue, no health (it showed healthy with 1,024 places); the info series says 0
    assert state() == {"seqserve_model_info": [0.0]}
    client.load_model("sentiment")
    assert httpx.post(f"{server.url}/v2/models/sentiment/infer", json=BODY).json()["model_version"] == "1"
    assert documented()
    assert state()["seqserve_queue_limit"] == [1024.0] and state()["seqserve_model_healthy"] == [1.0]
    grpc.close()


def test_model_control_is_off_by_default_and_refused_with_workers(committed_server: Server) -> None:
    r = httpx.post(f"{committed_server.url}/v2/repository/models/sentiment/unload")
    assert r.status_code == 409 and r.json()["field"] == "SEQSERVE_MODEL_CONTROL"
    index = httpx.post(f"{committed_server.url}/v2/repository/index").json()  # reading is always allowed
    assert {(m["name"], m["state"]) for m in index} == {("sentiment", "READY"), ("translate-en-de", "READY")}
    with pytest.raises(InferenceServerException) as err:
        tg.InferenceServerClient(committed_server.grpc_url).unload_model("sentiment")
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    control = ModelControl(None, Settings(model_control=True, workers=2))  # type: ignore[arg-type]
    with pytest.raises(ModelControlRefused, match="SEQSERVE_WORKERS is 2"):
        asyncio.run(control.load("sentiment"))


def test_translate_with_no_translator_served_is_404_not_the_clients_fault(server: Server) -> None:
    """This repository serves no translator (as after unloading one): v1 translate answered 422
    "unknown language pair en->de; available: " (nothing), as if the request were wrong."""
    r = httpx.post(f"{server.url}/v1/translate", json={"text": "A dog runs."})
    assert r.status_code == 404 and r.json()["code"] == "model_not_found", r.text
    assert r.json()["error"] == "no translation model is served"


def test_the_repository_extension_is_listed_only_where_a_load_can_work() -> None:
    from service import v2_model

    assert "model_repository" in v2_model.extensions(Settings(model_control=True))
    # several workers: every load is refused (409), so it is not advertised
    assert "model_repository" not in v2_model.extensions(Settings(model_control=True, workers=2))


def test_two_classifiers_the_v1_route_answers_with_the_first_by_name_whatever_was_loaded_last(
        tmp_path: Path) -> None:
    """It answered with whichever the load and unload history put first: a second classifier
    added for v2 silently took over /v1/sentiment after a reload."""
    repo = tmp_path / "repo"
    (repo / "sentiment").mkdir(parents=True)
    (repo / "sentiment" / "1").symlink_to((COMMITTED_MODELS / "sentiment" / "1").resolve())
    _add_version(tmp_path, "1").parent.rename(repo / "another-sentiment")  # a copy, renamed
    card_file = repo / "another-sentiment" / "1" / "model.json"
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), "name": "another-sentiment"}))
    server = Server(repo, model_control="true").wait_ready()
    try:
        def v1_model() -> str:
            return str(httpx.post(f"{server.url}/v1/sentiment", json={"text": "fine"}).json()["model"])

        assert v1_model() == "another-sentiment"
        assert httpx.post(f"{server.url}/v2/repository/models/another-sentiment/unload").status_code == 200
        assert v1_model() == "sentiment"
        assert httpx.post(f"{server.url}/v2/repository/models/another-sentiment/load").status_code == 200
        assert v1_model() == "another-sentiment"
    finally:
        server.stop()
    assert ("/v1/sentiment answers with model another-sentiment, the first by name of another-sentiment, sentiment; "
            "the others through v2") in server.output()
