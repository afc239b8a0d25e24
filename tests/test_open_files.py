"""The warning when open files near their limit (service/open_files.py)."""

from __future__ import annotations

import errno
import logging
import os
import resource
import subprocess
import sys
import time

import httpx
import pytest

from service.open_files import OpenFilesWatch, limit, open_files
from tests.conftest import COMMITTED_MODELS, ROOT


def test_one_warning_per_episode_and_a_note_when_it_is_over(caplog: pytest.LogCaptureFixture) -> None:
    watch = OpenFilesWatch()
    with caplog.at_level(logging.INFO, "seqserve.open_files"):
        for count in (10, 116, 120, 128, 110, 105, 60, 116):
            watch.check(count, 128)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 2 and warnings[0].startswith("116 open files of the limit of 128: at the limit new "
                                                         "connections are closed as they are accepted")
    assert notes == ["open files down to 60 of 128 (at most 128 meanwhile)"]
    watch.check(10**6, None)  # no limit: nothing to say


def test_counts_this_process_and_at_the_limit_is_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    before = open_files()
    with open(__file__):
        assert open_files() == before + 1
    assert limit() is None or limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def no_descriptor_left(path: str) -> list[str]:  # listing /proc/self/fd takes one
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "listdir", no_descriptor_left)
    assert open_files(128) == 128


def test_a_server_at_its_limit_says_so() -> None:
    """It logged nothing while uvloop reset every new connection."""
    from loadtests.server import free_port

    port = free_port()
    env = {**os.environ, "SEQSERVE_MODEL_REPOSITORY": str(COMMITTED_MODELS), "SEQSERVE_PORT": str(port),
           "SEQSERVE_GRPC_PORT": "0", "SEQSERVE_PRECISION": "fp32"}
    # the hard limit low, so that the start cannot raise the soft one past it
    code = "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100)); " \
           "sys.argv = ['service']; runpy.run_module('service', run_name='__main__')"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    clients: list[httpx.Client] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for _ in range(110):  # idle keep-alive connections, each a descriptor in the server
            client = httpx.Client(timeout=0.5)
            clients.append(client)
            try:
                client.get(f"http://127.0.0.1:{port}/v2/health/live")
            except httpx.HTTPError:
                break
        time.sleep(2.5)
    finally:
        for client in clients:
            client.close()
        time.sleep(2.5)
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert "open files of the limit of 100: at the limit new connections are closed" in out
    assert "open files down to" in out
