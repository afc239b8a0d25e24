"""The precision a model version is served in (SEQSERVE_PRECISION), through real servers."""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path

import httpx
import pytest

from loadtests.server import metric_value
from service.affinity import allowed_cpus
from service.model_card import load_model_card
from service.onnx_session import ModelLoadError
from service.registry import CPU_BATCH_COST_SCALE, choose_precision, instances_for, load_model
from service.runners import SentimentRunner
from service.server import STARTUP_FAILED
from service.settings import Settings
from tests.conftest import Server, model_repository


def _precisions(server: Server) -> dict[str, tuple[str, str]]:
    """Per model: (v1 /v1/models precision, v2 metadata parameters.precision)."""
    v1 = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    return {name: (m["precision"], httpx.get(f"{server.url}/v2/models/{name}").json()["parameters"]["precision"])
            for name, m in v1.items()}


@pytest.fixture(scope="module")
def fp32_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_repository(tmp_path_factory.mktemp("fp32") / "models")


def test_auto_serves_int8_on_the_cpu_where_the_card_allows_and_says_so(int8_repo: Path) -> None:
    server = Server(int8_repo, precision="auto").wait_ready()
    try:
        assert _precisions(server) == {"sentiment": ("int8", "int8"), "translate-en-de": ("int8", "int8")}
        assert server.wait_for_output("sentiment/1 on CPUExecutionProvider (int8)")
        assert server.wait_for_output("translate-en-de/1 on CPUExecutionProvider (int8)")
        good = httpx.post(f"{server.url}/v1/sentiment", json={"text": "A gorgeous, witty, seductive movie."}).json()
        assert good["label"] == "positive"
        de = httpx.post(f"{server.url}/v1/translate", json={"text": "Two dogs play in the snow."}, timeout=30).json()
        assert "Hunde" in de["translation"]
        models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        card = load_model_card(int8_repo / "sentiment" / "1" / "model.json")
        # the metrics shown are those measured for the precision served (none yet in this fresh card)
        expected = card.precisions["int8"].metrics if card.precisions else {}
        assert models["sentiment"]["metrics"] == expected
        # the model's own CPU is counted apart from the server's (make bench splits the two)
        for name in ("sentiment", "translate-en-de"):
            assert metric_value(server.url, "seqserve_model_cpu_seconds_total", model=name) > 0
        # INSTANCES unset: two worker threads for the classifier, two decode lanes for the translator
        assert _instances(server) == {"sentiment": 2, "translate-en-de": 2}
        assert server.wait_for_output("int8, 2 instance(s)")
    finally:
        assert server.stop() == 0


def _instances(server: Server) -> dict[str, int]:
    """Per model: the instance_group count its v2 configuration reports."""
    return {name: httpx.get(f"{server.url}/v2/models/{name}/config").json()["instance_group"][0]["count"]
            for name in ("sentiment", "translate-en-de")}


def test_instances_set_apply_to_every_model(fp32_repo: Path) -> None:
    server = Server(fp32_repo, instances="3").wait_ready()
    try:
        assert _instances(server) == {"sentiment": 3, "translate-en-de": 3}
        assert server.wait_for_output("3 instance(s) a model")  # the settings line
    finally:
        assert server.stop() == 0


@pytest.mark.skipif(len(allowed_cpus()) < 2, reason="one CPU: nothing to spread the threads over")
def test_pinned_model_threads_run_one_on_each_cpu_and_start_up_says_which(fp32_repo: Path) -> None:
    cpus = allowed_cpus()[:2]
    server = Server(fp32_repo, pin_model_threads="on").wait_ready()
    try:
        said = f"2 instance(s) (threads on CPUs {cpus[0]}, {cpus[1]})"
        assert server.wait_for_output(f"translate-en-de/1 (translation) on CPUExecutionProvider, fp32, {said}")
        assert server.wait_for_output(f"sentiment/1 (text-classification) on CPUExecutionProvider, fp32, {said}")
        # each model's two threads (the classifier's workers, the translator's lanes): one on each
        pinned = collections.Counter(cpu for cpu_set in _thread_cpu_sets(server.proc.pid) if len(cpu_set) == 1
                                     for cpu in cpu_set)
        assert pinned == {cpus[0]: 2, cpus[1]: 2}
    finally:
        assert server.stop() == 0


def _thread_cpu_sets(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.parametrize("mode", ["on", "off"])
def test_the_setting_decides_the_cpus_in_each_models_policy(int8_repo: Path, mode: str) -> None:
    card = int8_repo / "sentiment" / "1" / "model.json"
    model = load_model(card, ["CPUExecutionProvider"], Settings(pin_model_threads=mode, warmup=False))
    cpus = allowed_cpus()
    assert model.engine.policy.thread_cpus == (cpus[:2] if mode == "on" and len(cpus) > 1 else ())


def test_a_classifier_batch_on_the_cpu_counts_its_hand_over_beside_its_model_run(
        int8_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SentimentRunner, "measure_batch_overhead", lambda self: 12.0)
    model = load_model(int8_repo / "sentiment" / "1" / "model.json", ["CPUExecutionProvider"], Settings())
    assert CPU_BATCH_COST_SCALE > 1
    assert model.engine.policy.batch_overhead_tokens == 12.0 * CPU_BATCH_COST_SCALE  # type: ignore[union-attr]


@pytest.mark.parametrize(("instances", "expected"), [(None, 2), (4, 4), (1, 1)])
def test_instances_for(instances: int | None, expected: int) -> None:
    assert instances_for(Settings(instances=instances)) == expected


def test_int8_asked_for_is_served_for_every_model(int8_repo: Path) -> None:
    server = Server(int8_repo, precision="int8").wait_ready()
    try:
        assert _precisions(server) == {"sentiment": ("int8", "int8"), "translate-en-de": ("int8", "int8")}
        de = httpx.post(f"{server.url}/v1/translate", json={"text": "Two dogs play in the snow."}, timeout=30).json()
        assert "Hunde" in de["translation"]
    finally:
        assert server.stop() == 0


def test_fp32_asked_for_is_served_even_where_int8_graphs_exist(int8_repo: Path) -> None:
    server = Server(int8_repo, precision="fp32").wait_ready()
    try:
        assert _precisions(server) == {"sentiment": ("fp32", "fp32"), "translate-en-de": ("fp32", "fp32")}
        models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert models["sentiment"]["metrics"]["sst2_test_accuracy"] >= 0.83
        assert _instances(server) == {"sentiment": 2, "translate-en-de": 2}  # fp32: the model is the larger cost
    finally:
        server.stop()
    assert "no INT8 graph" not in server.output()


def test_auto_without_int8_graphs_serves_fp32_with_a_warning(fp32_repo: Path) -> None:
    server = Server(fp32_repo, precision="auto").wait_ready()
    try:
        assert _precisions(server) == {"sentiment": ("fp32", "fp32"), "translate-en-de": ("fp32", "fp32")}
    finally:
        server.stop()
    log = server.output()
    assert "WARNING" in log and f"{fp32_repo / 'sentiment' / '1' / 'sentiment.int8.onnx'} missing" in log
    assert "make int8" in log


def test_int8_asked_for_and_missing_refuses_to_start_naming_the_file(fp32_repo: Path) -> None:
    server = Server(fp32_repo, precision="int8")
    assert server.proc.wait(timeout=60) == STARTUP_FAILED
    log = server.output()
    assert f"{fp32_repo / 'sentiment' / '1' / 'sentiment.int8.onnx'}: INT8 graph not found" in log
    assert "refusing to start" in log
    assert "Traceback" not in log  # the refusal is its line: the models load before uvicorn's lifespan


def test_a_card_that_breaks_the_schema_is_named_in_one_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.json").write_text('{"name": "m", "version": "1"}')
    server = Server(tmp_path)
    assert server.proc.wait(timeout=60) == STARTUP_FAILED
    (refusal,) = [line for line in server.output().splitlines() if "refusing to start" in line]
    assert refusal.endswith(f"{tmp_path / 'm' / '1' / 'model.json'}: does not follow the model.json schema "
                            "(12 problems): task: Field required; description: Field required; architecture: Field "
                            "required; graphs: Field required; tokenizers: Field required; special_tokens: Field "
                            "required; max_input_tokens: Field required; training_data: Field required; training: "
                            "Field required; metrics: Field required; opset: Field required; parity: Field required")
    assert "Traceback" not in server.output() and "pydantic.dev" not in server.output()


def test_choose_precision(int8_repo: Path, fp32_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder, bare = int8_repo / "translate-en-de" / "1", fp32_repo / "translate-en-de" / "1"
    card = load_model_card(folder / "model.json")
    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    assert Settings.model_fields["precision"].default == "auto"
    assert card.precisions is not None and card.precisions["int8"].auto is True
    assert choose_precision("auto", folder, card, cpu) == "int8"
    card.precisions["int8"].auto = False  # a card that keeps its INT8 opt-in
    assert choose_precision("auto", folder, card, cpu) == "fp32"
    card.precisions["int8"].auto = True
    assert choose_precision("auto", folder, card, cuda) == "fp32"  # fp32 stays the GPU's precision
    assert choose_precision("fp32", folder, card, cpu) == "fp32"
    with caplog.at_level(logging.WARNING):
        assert choose_precision("auto", bare, card, cuda) == "fp32"
        assert not caplog.records  # nothing was expected on the GPU
        assert choose_precision("int8", folder, card, cuda) == "int8"
        assert "CPU kernels" in caplog.text
    with pytest.raises(ModelLoadError, match=r"encoder\.int8\.onnx: INT8 graph not found"):
        choose_precision("int8", bare, card, cpu)
    card.precisions = None  # a fresh export: graphs derived (make int8), nothing measured on the card
    assert choose_precision("auto", folder, card, cpu) == "fp32"
    assert choose_precision("int8", folder, card, cpu) == "int8"  # asked for by name, it is served


async def test_liveness_fails_once_a_model_has_been_unhealthy_for_a_minute() -> None:
    """Liveness said true whatever happened: a model whose threads kept failing stayed not-ready
    for good (no traffic reaches it to show it mended) and was never restarted."""
    from types import SimpleNamespace

    from service import grpc_v2, routes_v2
    from service.registry import LIVENESS_GRACE_S, ModelRegistry

    engines = [SimpleNamespace(unhealthy_s=0.0), SimpleNamespace(unhealthy_s=0.0)]
    registry = SimpleNamespace(all=lambda: [SimpleNamespace(engine=e) for e in engines])
    registry.alive = lambda grace_s=LIVENESS_GRACE_S: ModelRegistry.alive(registry, grace_s)  # type: ignore[arg-type]
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(registry=registry)))
    servicer = grpc_v2.InferenceServicer.__new__(grpc_v2.InferenceServicer)
    servicer.state = request.app.state
    engines[1].unhealthy_s = 5.0  # not ready for a while: alive (readiness already keeps traffic away)
    assert (await routes_v2.live(request)).status_code == 200  # type: ignore[arg-type]
    assert (await servicer._server_live(None, None)).live  # type: ignore[arg-type]
    engines[1].unhealthy_s = LIVENESS_GRACE_S
    answer = await routes_v2.live(request)  # type: ignore[arg-type]
    assert answer.status_code == 503 and answer.body == b'{"live":false}'
    assert not (await servicer._server_live(None, None)).live  # type: ignore[arg-type]
