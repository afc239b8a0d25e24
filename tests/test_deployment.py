"""Deployment files: Kubernetes manifests validate offline; images and compose keep their promises."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.registry import instances_for
from service.settings import Settings
from tests.conftest import ROOT

K8S_VERSION = "1.30.0"
MANIFESTS = sorted((ROOT / "docker" / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_validate_against_the_schemas(manifest: Path) -> None:
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["lifecycle"]["preStop"]
    assert pod["terminationGracePeriodSeconds"] > 30  # longer than the default drain timeout
    # the Service is named seqserve: its injected SEQSERVE_PORT=tcp://... would be taken as a setting
    assert pod["enableServiceLinks"] is False
    service = next(d for d in docs if d["kind"] == "Service")
    assert {p["name"]: p.get("appProtocol") for p in service["spec"]["ports"]}["grpc"] == "kubernetes.io/h2c"
    # ONNX Runtime's threads (one per instance, per session) no more than the CPUs the pod may use:
    # more only adds contention (the README's ORT_INTRA_OP_THREADS)
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    settings = Settings(**{k.removeprefix("SEQSERVE_").lower(): v for k, v in env.items() if k.startswith("SEQSERVE_")})
    threads = settings.ort_intra_op_threads
    instances = instances_for(settings)
    assert threads >= 1 and threads * instances <= float(container["resources"]["limits"]["cpu"])


def _final_stage(dockerfile: Path) -> str:
    return re.split(r"(?m)^FROM ", dockerfile.read_text())[-1]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_runtime_images_are_non_root_exec_form_with_healthcheck_and_no_torch(name: str) -> None:
    dockerfile = ROOT / "docker" / name
    final = _final_stage(dockerfile)
    assert re.search(r"(?m)^USER 10001", final)
    assert re.search(r'(?m)^ENTRYPOINT \["python", "-m", "service"\]', final)
    assert "/v2/health/ready" in final and "HEALTHCHECK" in final
    assert not re.search(r"(?m)^RUN .*(torch|\[.*train.*\])", dockerfile.read_text())
    assert re.search(r"(?m)^COPY (--from=int8 /src/)?models /app/models$", final)


def test_cpu_image_derives_the_int8_graphs_at_build_outside_the_runtime_stage() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", dockerfile)
    int8 = next(stage for stage in stages if stage.split("\n", 1)[0].endswith(" AS int8"))
    assert re.search(r"(?m)^RUN .*-m export\.quantize .*--model-dir", int8)
    assert "COPY --from=int8 /src/models /app/models" in stages[-1]


def test_compose_stack_wires_health_gpu_profile_and_locust() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    # the image's HEALTHCHECK, which follows SEQSERVE_PORT (a fixed 8000 never turned healthy after a
    # port change, and the Locust services waiting for it never started)
    dockerfile_check = re.search(r'CMD (\[.*\])', (ROOT / "docker" / "Dockerfile").read_text())
    assert dockerfile_check
    assert services["api"]["healthcheck"]["test"] == ["CMD", *yaml.safe_load(dockerfile_check.group(1))]
    # host ports movable by variable: an override file's ports are added to these, not put in their place
    assert all(re.fullmatch(r"127\.0\.0\.1:\$\{[A-Z_]+:-\d+\}:\d+", port)
               for name in ("api", "api-gpu", "locust-master") for port in services[name]["ports"])
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert services["locust-master"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "--worker" in services["locust-worker"]["command"]
    assert "--headless" in services["locust-headless"]["command"]
    # each Locust service can build its image, whichever of them runs first
    assert all("build" in services[name] for name in ("locust-master", "locust-worker", "locust-headless"))
    # a read-only root still needs a writable /tmp on CUDA (ONNX Runtime's profiler, service/onnx_session.py)
    assert services["api-gpu"]["read_only"] and services["api-gpu"]["tmpfs"] == ["/tmp"]
    gpu_deployment = next(yaml.safe_load_all((ROOT / "docker" / "k8s" / "seqserve-gpu.yaml").read_text()))
    pod = gpu_deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)


def test_the_load_generator_image_carries_what_the_grpc_user_imports() -> None:
    """GrpcInferenceUser imports grpc and the Open Inference Protocol's stubs (only when it runs):
    the Locust image installs grpcio and protobuf and copies the stubs, not the rest of the server
    (checked built and run with ../shared/tools/container-check: 150 gRPC calls, 0 failures)."""
    dockerfile = (ROOT / "docker" / "Dockerfile.locust").read_text()
    assert '"grpcio>=' in dockerfile and '"protobuf>=' in dockerfile
    assert "COPY service/grpc_protocol ./service/grpc_protocol" in dockerfile
    assert "COPY service/__init__.py ./service/__init__.py" in dockerfile and "COPY service " not in dockerfile
    imports = re.findall(r"^(?:from|import) (\S+)", (ROOT / "loadtests" / "locustfile.py").read_text(), re.M)
    assert not [name for name in imports if name.startswith(("service", "grpc"))]  # at module level: none


def test_the_image_s_int8_stage_gets_every_export_module_the_quantizer_imports() -> None:
    """.dockerignore leaves out export/ but the quantizer's modules: each export module that
    export/quantize.py imports at module level, and those they import, must be let in, or the
    image build's `python -m export.quantize` fails (export/cli.py was left out from 3e8e932 until
    stop 41, when a container-check build found it)."""
    ignored = (ROOT / ".dockerignore").read_text().split()
    needed, todo = set(), ["quantize"]
    while todo:
        module = todo.pop()
        if module in needed:
            continue
        needed.add(module)
        source = (ROOT / "export" / f"{module}.py").read_text()
        todo += re.findall(r"^from export\.(\w+) import", source, re.M)
    assert needed >= {"quantize", "cli", "data", "row_int8", "bidirectional"}
    assert [f"!export/{module}.py" for module in sorted(needed) if f"!export/{module}.py" not in ignored] == []
