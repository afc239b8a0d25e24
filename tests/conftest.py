"""Shared fixtures: a tiny, really exported model repository, and real servers on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SEQSERVE_DATA_DIR", ROOT.parent / "shared" / "data"))
COMMITTED_MODELS = Path(os.environ.get("SEQSERVE_TEST_MODELS", ROOT / "models"))

needs_data = pytest.mark.skipif(not (DATA_DIR / "sst2").is_dir(), reason=f"no data sets under {DATA_DIR}")

TINY_SENTIMENT = ["--vocab", "400", "--embed-dim", "32", "--hidden", "16", "--epochs", "1", "--limit", "400"]
TINY_TRANSLATION = ["--src-vocab", "400", "--tgt-vocab", "400", "--embed-dim", "32", "--encoder-hidden", "16",
                    "--decoder-hidden", "32", "--attention-dim", "16", "--epochs", "1", "--limit", "400",
                    "--val-limit", "8", "--batch-size", "64"]


def _python(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=True)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small models trained for a few steps and exported through the real export path."""
    if not (DATA_DIR / "sst2").is_dir():
        pytest.skip(f"no data sets under {DATA_DIR}")
    base = tmp_path_factory.mktemp("tiny")
    repo = base / "models"
    from export.onnx_export import export_sentiment, export_translation
    from export.train_sentiment import main as train_sentiment
    from export.train_translation import main as train_translation

    train_sentiment([*TINY_SENTIMENT, "--data-dir", str(DATA_DIR), "--run-dir", str(base / "run-s")])
    train_translation([*TINY_TRANSLATION, "--data-dir", str(DATA_DIR), "--run-dir", str(base / "run-t")])
    export_sentiment(base / "run-s", repo / "sentiment" / "1", DATA_DIR)
    export_translation(base / "run-t", repo / "translate-en-de" / "1", DATA_DIR)
    return repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real `python -m service` process on 127.0.0.1 and a free port."""

    def __init__(self, repo: Path, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SEQSERVE_MODEL_REPOSITORY": str(repo), "SEQSERVE_PORT": str(self.port),
               "SEQSERVE_HOST": "127.0.0.1", "SEQSERVE_ACCESS_LOG": "false",
               **{f"SEQSERVE_{k.upper()}": v for k, v in settings.items()}}
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout: float = 60.0) -> Server:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="session")
def committed_server() -> Iterator[Server]:
    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    server = Server(COMMITTED_MODELS).wait_ready()
    yield server
    server.stop()


def read_json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def openapi_schema(committed_server: Server):  # type: ignore[no-untyped-def]
    import schemathesis

    return schemathesis.openapi.from_url(f"{committed_server.url}/openapi.json")
