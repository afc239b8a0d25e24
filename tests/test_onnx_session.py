"""Provider choice, the CUDA provider's options, the refusal of an unmet 'cuda', and the
profiler's record of which provider ran each node (all on a CPU-only onnxruntime)."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.model_card import load_model_card
from service.onnx_session import (
    CPU,
    CUDA,
    CudaOptions,
    ModelLoadError,
    ProviderUnavailable,
    choose_providers,
    cuda_options,
    node_providers,
    open_session,
)
from service.registry import ModelRegistry
from service.settings import Settings
from tests.conftest import COMMITTED_MODELS, Server

needs_cpu_only_ort = pytest.mark.skipif(CUDA in ort.get_available_providers(),
                                        reason="this onnxruntime has a CUDA provider")


def test_a_card_whose_fixed_sizes_differ_from_its_graphs_is_refused() -> None:
    """A card claiming 3 classes (and 3 labels) for a graph of 2 loaded, then failed every request."""
    model_dir = COMMITTED_MODELS / "sentiment" / "1"
    spec = load_model_card(model_dir / "model.json").graphs["model"]
    spec.outputs[0].shape = ["batch", 3]
    with pytest.raises(ModelLoadError, match=re.escape("sentiment.onnx: graph output probabilities has shape "
                                                       "['batch', 2], but model.json says ['batch', 3]")):
        open_session(model_dir, spec, [CPU])
    spec.outputs[0].shape = ["batch"]
    with pytest.raises(ModelLoadError, match=re.escape("model.json says ['batch']")):
        open_session(model_dir, spec, [CPU])


def test_an_output_whose_rank_onnx_cannot_infer_is_not_compared() -> None:
    """ONNX Runtime says [] for it (not None): such a graph, which loaded before, was refused."""
    from onnx import TensorProto, helper

    from service.model_card import TensorSpec
    from service.onnx_session import _check_io

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x, shape], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    assert session.get_outputs()[0].shape == []
    _check_io(Path("model.onnx"), "output", session.get_outputs(), [TensorSpec(name="y", dtype="float32",
                                                                               shape=["batch", 2])])


def test_cuda_settings_become_provider_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CudaOptions().provider_options() == {"device_id": "0", "arena_extend_strategy": "kNextPowerOfTwo",
                                                "use_tf32": "0"}  # TF32 off unless asked for; no memory cap
    for key, value in {"CUDA_DEVICE_ID": "1", "CUDA_MEM_LIMIT_MB": "512", "CUDA_ARENA": "kSameAsRequested",
                       "CUDA_TF32": "true"}.items():
        monkeypatch.setenv(f"SEQSERVE_{key}", value)
    assert cuda_options(Settings()).provider_options() == {
        "device_id": "1", "arena_extend_strategy": "kSameAsRequested", "use_tf32": "1",
        "gpu_mem_limit": str(512 * 1024 * 1024)}


def test_a_wrong_arena_strategy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_CUDA_ARENA", "kBiggest")
    with pytest.raises(ValueError, match="cuda_arena"):
        Settings()


def test_without_a_writable_temporary_folder_the_profiler_stays_off_and_nothing_fails(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A read-only root without a writable /tmp (the GPU deployments as first written): the
    profiler that reports CPU fallbacks on CUDA must not stop the server from starting."""
    import tempfile

    from service.onnx_session import session_options

    def no_folder() -> str:
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.setattr(tempfile, "gettempdir", no_folder)
    assert not session_options(profile_as="test").enable_profiling
    monkeypatch.undo()
    spec = load_model_card(COMMITTED_MODELS / "sentiment" / "1" / "model.json").graphs["model"]
    options = session_options(profile_as="test")
    options.profile_file_prefix = str(tmp_path / "missing-folder" / "profile")  # ORT cannot write there
    session = ort.InferenceSession(str(COMMITTED_MODELS / "sentiment" / "1" / spec.file), sess_options=options,
                                   providers=[CPU])
    assert node_providers(session) == {}


@needs_cpu_only_ort
def test_cuda_is_refused_without_a_cuda_provider_and_auto_falls_back() -> None:
    with pytest.raises(ProviderUnavailable, match="install onnxruntime-gpu instead of onnxruntime"):
        choose_providers("cuda")
    assert choose_providers("auto") == [CPU]
    assert choose_providers("cpu") == [CPU]


def test_options_go_with_the_cuda_provider_when_it_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    options = CudaOptions(mem_limit_mb=64)
    assert choose_providers("cuda", options) == [(CUDA, options.provider_options()), CPU]
    assert choose_providers("cpu", options) == [CPU]


@needs_cpu_only_ort
def test_a_cuda_provider_that_does_not_start_is_refused_under_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The provider is listed but does not start (here: the CPU build drops it, as a GPU build
    does without a GPU or its libraries): 'cuda' refuses, 'auto' serves on the CPU and says so."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the profiler writes
    with pytest.raises(ProviderUnavailable, match="could not start its CUDA provider"):
        ModelRegistry.load(Settings(providers="cuda", model_repository=COMMITTED_MODELS, warmup=False,
                                    precision="fp32"))
    assert list(tmp_path.iterdir()) == []  # the refusal leaves no profile behind
    with caplog.at_level(logging.INFO):
        registry = ModelRegistry.load(Settings(providers="auto", model_repository=COMMITTED_MODELS, warmup=True,
                                              precision="fp32"))
    assert {m.provider for m in registry.all()} == {CPU}
    assert caplog.text.count("the CUDA provider could not start") == 2  # once per model
    # the profiler that the CUDA request turned on is ended at the fallback: no placement warnings
    # that only repeat that every node ran on the CPU, and no profile left behind
    assert "nodes ran on CUDA" not in caplog.text and list(tmp_path.iterdir()) == []


def test_the_profiler_names_each_nodes_provider() -> None:
    card = load_model_card(COMMITTED_MODELS / "sentiment" / "1" / "model.json")
    spec = card.graphs["model"]
    plain = open_session(COMMITTED_MODELS / "sentiment" / "1", spec, [CPU])
    assert node_providers(plain) == {}  # the profiler is off unless the session runs on CUDA
    from service.onnx_session import session_options

    session = ort.InferenceSession(str(COMMITTED_MODELS / "sentiment" / "1" / spec.file),
                                   sess_options=session_options(profile_as="test"), providers=[CPU])
    ids = np.full((2, 7), 5, dtype=np.int64)
    session.run(None, {spec.inputs[0].name: ids, spec.inputs[1].name: np.array([7, 4], dtype=np.int64)})
    counts = node_providers(session)
    assert counts[(CPU, "LSTM")] >= 2  # stacked and bidirectional: one node per layer at least
    assert {provider for provider, _ in counts} == {CPU}
    assert node_providers(session) == {}  # read once: the profiling ended


@needs_cpu_only_ort
def test_a_server_asked_for_cuda_without_it_refuses_to_start() -> None:
    server = Server(COMMITTED_MODELS, providers="cuda")
    assert server.proc.wait(timeout=60) == 3
    log = server.output()
    assert "refusing to start" in log and "SEQSERVE_PROVIDERS=cuda" in log and "onnxruntime-gpu" in log


def _failing_graph(path: Path) -> Path:
    """A Reshape to two rows: any odd length fails inside ONNX Runtime, at run time."""
    import onnx
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2, -1])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("log_level", ["info", "debug"])
def test_onnx_runtimes_own_error_lines_stay_out_of_the_log(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                           log_level: str) -> None:
    """A failed run printed ONNX Runtime's own coloured line on stderr before the service's JSON
    one (LOG_FORMAT=json promises every line parses); the exception carries the same words."""
    import numpy as np
    import onnxruntime as ort

    from service.onnx_session import quiet_runtime_log

    quiet_runtime_log(log_level)
    try:
        session = ort.InferenceSession(str(_failing_graph(tmp_path / "g.onnx")), providers=["CPUExecutionProvider"])
        with pytest.raises(Exception, match="Reshape"):
            session.run(None, {"x": np.zeros(3, np.float32)})
        said = capfd.readouterr().err
        assert ("onnxruntime" in said) == (log_level == "debug"), said  # debug keeps its lines
    finally:
        quiet_runtime_log("info")
