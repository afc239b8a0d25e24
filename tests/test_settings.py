"""service/settings.py: settings are validated when the server starts, each bad one named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.conftest import ROOT


@pytest.mark.parametrize(("setting", "value"), [
    ("max_queue_delay_ms", float("inf")),  # a batch worker's wait would raise OverflowError
    ("request_timeout_s", float("nan")),
    ("drain_timeout_s", 1e300),
    ("api_keys", [""]),  # would declare keys while letting every request through
    ("api_keys", ["k-1", "  "]),
    ("auth_exempt_paths", ["/"]),  # exempt by prefix: every path
    ("auth_exempt_paths", [""]),
    ("log_level", "verbose"),
    ("grpc_port", 8000),  # the HTTP port's too (the default)
    ("host", ""),  # set but empty (${HOST} unset): it bound every interface
    ("host", "  "),
    ("model_repository", ""),  # it was the working folder
    ("ort_intra_op_threads", 100_000),  # it never started, its memory growing
    ("cuda_mem_limit_mb", 10**20),
    ("cors_origins", ["https://app.example/"]),  # a trailing slash matched no browser
    ("cors_origins", ["app.example.org"]),
    ("cors_origins", ["https://*.example.com"]),  # compared literally: it matched no browser
    ("version_policy", {"sentiment": {"specific": ["1", "abc"]}}),  # its /config answered 500
    ("version_policy", {"sentiment": {"specific": ["01"]}}),
    ("instances", 0),
    ("instances", "many"),
])
def test_a_bad_setting_is_refused(setting: str, value: object) -> None:
    with pytest.raises(ValidationError, match=setting):
        Settings(**{setting: value})


def test_a_request_may_hold_no_more_texts_than_the_queue() -> None:
    # admitted whole or refused whole: more texts than the queue holds could never be admitted
    assert Settings(max_queue_size=2).max_texts_per_request == 2
    assert Settings(max_queue_size=100, max_texts_per_request=8).max_texts_per_request == 8


def test_a_heartbeat_timeout_shorter_than_three_beats_is_refused() -> None:
    """0.5 s took every healthy worker for hung (they beat once a second): restarted for ever."""
    assert Settings(worker_heartbeat_timeout_s=0).worker_heartbeat_timeout_s == 0
    assert Settings(worker_heartbeat_timeout_s=3).worker_heartbeat_timeout_s == 3
    with pytest.raises(ValidationError, match="shorter than 3 heartbeats"):
        Settings(worker_heartbeat_timeout_s=0.5)


def test_cors_origins_are_read_as_browsers_send_them() -> None:
    assert Settings(cors_origins=["https://App.Example.com:8443", "*"]).cors_origins == \
        ["https://app.example.com:8443", "*"]


def test_a_bad_value_inside_a_json_setting_names_the_setting_and_the_place() -> None:
    env = {**os.environ, "SEQSERVE_VERSION_POLICY": '{"sentiment": {"latest": 0}}', "SEQSERVE_API_KEYS": "[1234]"}
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3, run.stderr
    # not SEQSERVE_VERSION_POLICY_SENTIMENT_LATEST, a variable nobody set
    assert "invalid setting SEQSERVE_VERSION_POLICY (at sentiment.latest): Input should be greater" in run.stderr
    assert "invalid setting SEQSERVE_API_KEYS (at 0): Input should be a valid string" in run.stderr


def test_instances_unset_or_auto_leave_the_count_to_each_model() -> None:
    # service/registry.py's instances_for: two unless set
    assert Settings().instances is None
    assert Settings(instances="Auto").instances is None
    assert Settings(instances="3").instances == 3


def test_the_log_level_is_read_in_any_case() -> None:
    assert Settings(log_level="DEBUG").log_level == "debug"


def test_the_server_names_a_bad_setting_and_exits_3() -> None:
    env = {**os.environ, "SEQSERVE_MAX_QUEUE_DELAY_MS": "inf", "SEQSERVE_LOG_LEVEL": "loud"}
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3
    assert "invalid setting SEQSERVE_MAX_QUEUE_DELAY_MS: Input should be a finite number" in run.stderr
    assert "invalid setting SEQSERVE_LOG_LEVEL" in run.stderr and "Traceback" not in run.stderr


def test_a_bad_setting_is_said_in_json_when_the_log_format_asked_is_json() -> None:
    """The line that explains a crash loop was the one line a JSON log pipeline could not parse."""
    env = {**os.environ, "SEQSERVE_MAX_QUEUE_DELAY_MS": "inf", "SEQSERVE_LOG_FORMAT": "json"}
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3
    (line,) = [json.loads(text) for text in run.stderr.splitlines()]
    assert line["level"] == "ERROR" and line["message"].startswith("invalid setting SEQSERVE_MAX_QUEUE_DELAY_MS: ")


def test_a_variable_that_is_no_setting_is_named_with_the_nearest_setting() -> None:
    from service.settings import unknown_variables

    lines = unknown_variables({"SEQSERVE_MAX_QUEUESIZE": "8", "SEQSERVE_SSL_CERTFILE": "c.pem", "SEQSERVE_PORT": "1",
                               "SEQSERVE_DATA_DIR": "data", "HOME": "/root"})  # a setting, a tool's, not ours
    assert lines == ["SEQSERVE_MAX_QUEUESIZE is not a setting and is ignored (did you mean SEQSERVE_MAX_QUEUE_SIZE?); "
                     "the settings are listed in the README",
                     "SEQSERVE_SSL_CERTFILE is not a setting and is ignored: seqserve has no TLS and serves plain "
                     "HTTP and gRPC; terminate TLS in front of it (README, Behind a reverse proxy)"]
    assert unknown_variables({"SEQSERVE_TIMEOUT": "5"}) == [  # difflib said SEQSERVE_DRAIN_TIMEOUT_S
        "SEQSERVE_TIMEOUT is not a setting and is ignored (did you mean SEQSERVE_REQUEST_TIMEOUT_S?); the settings "
        "are listed in the README"]
    # a guess that difflib finds nearer to another setting (it said SEQSERVE_MODEL_CONTROL)
    assert unknown_variables({"SEQSERVE_MODEL_DIR": "/m"}) == [
        "SEQSERVE_MODEL_DIR is not a setting and is ignored (did you mean SEQSERVE_MODEL_REPOSITORY?); the settings "
        "are listed in the README"]


def test_the_server_warns_of_an_unknown_variable_and_explains_a_kubernetes_service_link() -> None:
    env = {**os.environ, "SEQSERVE_MAX_QUEUESIZE": "8", "SEQSERVE_MODEL_REPOSITORY": "/nonexistent"}
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3  # no models: it stops, after saying what it ignored
    assert "SEQSERVE_MAX_QUEUESIZE is not a setting and is ignored (did you mean SEQSERVE_MAX_QUEUE_SIZE?)" \
        in run.stderr
    # what Kubernetes injects for a Service named seqserve, read as this server's port
    env = {**os.environ, "SEQSERVE_PORT": "tcp://10.96.0.12:80"}
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3 and "invalid setting SEQSERVE_PORT" in run.stderr
    assert "enableServiceLinks: false" in run.stderr


@pytest.mark.parametrize(("name", "value"), [("SEQSERVE_API_KEYS", ""), ("SEQSERVE_CORS_ORIGINS", "https://a.example"),
                                             ("SEQSERVE_VERSION_POLICY", '{"sentiment": {"latest": 1}')])
def test_a_json_setting_that_is_not_json_is_named_in_one_line(name: str, value: str) -> None:
    """An empty or unquoted value (compose's ${KEYS:-}, a bare origin) was a 40-line traceback, exit 1."""
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env={**os.environ, name: value},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 3 and "Traceback" not in run.stderr
    assert f"invalid setting {name}: not valid JSON (got {value!r})" in run.stderr


def test_the_command_takes_no_arguments_but_help() -> None:
    run = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and "SEQSERVE_" in run.stdout
    run = subprocess.run([sys.executable, "-m", "service", "--port", "9999"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)  # refused, not ignored while serving on SEQSERVE_PORT
    assert run.returncode == 2 and "unrecognized arguments: --port 9999" in run.stderr


def test_a_server_started_with_its_standard_streams_closed_stops_cleanly() -> None:
    """Started with stdin closed (``<&-``), the event loop's descriptor took number 0, and libuv,
    which never closes 0-2, aborted every shutdown with exit 134."""
    import signal
    import socket
    import time

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "SEQSERVE_PORT": str(port), "SEQSERVE_GRPC_PORT": "0", "SEQSERVE_WARMUP": "false",
           "SEQSERVE_MODEL_REPOSITORY": str(ROOT / "models")}
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdin=None, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: os.close(0))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, server.stdout.read() if server.stdout else ""
    finally:
        server.kill()


def test_start_up_says_the_settings_and_refuses_a_key_in_the_wrong_variable() -> None:
    """One line says what took effect (keys, limits, workers, gRPC were said nowhere). A key set in
    SEQSERVE_API_KEY (no S) ran the server without keys, with only a warning: refused, failing
    closed. A certificate setting says seqserve has no TLS."""
    env = {**os.environ, "SEQSERVE_API_KEYS": '["a", "b"]', "SEQSERVE_GRPC_PORT": "0", "SEQSERVE_SSL_CERTFILE": "/x",
           "SEQSERVE_MODEL_REPOSITORY": "/nonexistent"}
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert "gRPC off" in run.stderr and "API keys on (2)" in run.stderr and "queue 1024 texts a model" in run.stderr
    assert "SEQSERVE_SSL_CERTFILE is not a setting and is ignored: seqserve has no TLS" in run.stderr
    env = {**os.environ, "seqserve_api_key": "secret"}  # read in any case, as the settings are
    run = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3 and "SEQSERVE_API_KEY is not a setting, and the server would run without API keys" \
        in run.stderr, run.stderr
