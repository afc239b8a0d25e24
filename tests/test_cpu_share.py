"""The CPU-share probe reads real per-thread CPU of a real server under load."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from loadtests import cpu_share
from tests.conftest import COMMITTED_MODELS


def test_cpu_share_reports_the_event_loop_workers_and_client(capsys: pytest.CaptureFixture[str]) -> None:
    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    cpu_share.main(["--models", str(COMMITTED_MODELS), "--clients", "4", "--duration", "1"])
    out = capsys.readouterr().out
    for label in ("event loop (main thread)", "worker/lane thread", "server, all threads", "load generator"):
        assert re.search(rf"{re.escape(label)}.* \d+ us/request", out), label
    # the model's share, read from the server's seqserve_model_cpu_seconds_total: part of the server's
    server = re.search(r"server, all threads +(\d+) us/request", out)
    model = re.search(r"of which inside the model +(\d+) us/request", out)
    assert server and model and 0 < int(model[1]) < int(server[1]), out
    # the classifier's batches in the run (its default route), read from the server's /metrics
    # and their padded share (seqserve_padding_ratio): a batch of one text has none
    mean_batch = re.search(r"mean batch +([\d.]+) texts, (\d+)% of its positions padding", out)
    assert mean_batch and 1.0 <= float(mean_batch[1]) <= 4.0 and 0 <= int(mean_batch[2]) < 100, out
    # each thread's time on a core and waiting for one, of the run's; the machine's idle cores
    # and how often it went to sleep (at 4 clients the loop waits for the next request now and then)
    loop = re.search(r"event loop \(main thread\) .*on a core (\d+)% of the run, waiting for one (\d+)%; "
                     r"([\d.]+) sleeps a request\)", out)
    assert loop and 0 < int(loop[1]) <= 100 and 0 <= int(loop[2]) <= 100 and float(loop[3]) > 0, out
    idle = re.search(r"cores idle +(\d+)% of the run", out)
    assert idle and 0 <= int(idle[1]) <= 100, out


def test_cpu_share_compares_two_servers_in_alternating_rounds_a_fresh_pair_each(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    started: list[tuple[cpu_share.ServerProcess, str | None]] = []
    ready = cpu_share.ServerProcess.ready

    def counted(models: Path, **kwargs: Any) -> cpu_share.ServerProcess:
        started.append((ready(models, **kwargs), kwargs["settings"].get("instances")))
        return started[-1][0]

    monkeypatch.setattr(cpu_share.ServerProcess, "ready", counted)
    cpu_share.main(["--models", str(COMMITTED_MODELS), "--clients", "4", "--duration", "1", "--rounds", "2",
                    "--versus", "instances=1"])
    out = capsys.readouterr().out
    # a new pair each round, the first of it in the round's order, each stopped after its round
    assert [instances for _, instances in started] == [None, "1", "1", None]
    assert len({s.port for s, _ in started}) == 4 and all(s.proc.poll() is not None for s, _ in started)
    rounds = re.findall(r"round (\d) ([AB]): +[\d.]+ req/s, server +\d+ us/request, event loop +\d+, "
                        r"model +\d+, mean batch [\d.]+", out)
    assert rounds == [("1", "A"), ("1", "B"), ("2", "B"), ("2", "A")]  # alternating, each round's order flipped
    assert re.search(r"B / A: req/s \d+\.\d{3}, server CPU per request \d+\.\d{3}, event loop \d+\.\d{3}, "
                     r"model \d+\.\d{3}", out)


def test_cpu_share_counts_every_worker_process(capsys: pytest.CaptureFixture[str]) -> None:
    """With SEQSERVE_WORKERS=2 the server is a supervisor and its workers serve: their CPU counts
    (read from the supervisor's pid alone, B's server CPU came out at 0-2 us a request)."""
    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    cpu_share.main(["--models", str(COMMITTED_MODELS), "--clients", "4", "--duration", "1", "--rounds", "2",
                    "--same-servers", "--versus", "workers=2", "instances=1"])
    out = capsys.readouterr().out
    servers = re.findall(r"round \d B: +[\d.]+ req/s, server +(\d+) us/request, event loop +(\d+)", out)
    assert len(servers) == 2
    assert all(int(server) > 100 and int(loop) > 50 for server, loop in servers), servers


def test_cpu_share_sends_lists_of_texts(capsys: pytest.CaptureFixture[str]) -> None:
    """``--texts N``: each request a list of N sentences, which the batcher runs together."""
    if not list(COMMITTED_MODELS.glob("*/*/model.json")):
        pytest.skip("no committed models")
    cpu_share.main(["--models", str(COMMITTED_MODELS), "--clients", "1", "--texts", "8", "--duration", "1"])
    out = capsys.readouterr().out
    mean_batch = re.search(r"mean batch +([\d.]+) texts", out)
    assert mean_batch and float(mean_batch[1]) > 1.5, out  # one client alone: a batch is its own list's texts
    for refused in (["--texts", "0"], ["--route", "translate", "--texts", "4"]):
        with pytest.raises(SystemExit):
            cpu_share.main(refused)


def test_sentiment_lists_take_the_sentences_in_turn() -> None:
    requests = cpu_share.sentiment_lists(["a", "b", "c", "d", "e"], 2)
    bodies = [json.loads(request.partition(b"\r\n\r\n")[2]) for request in requests]
    assert bodies == [{"texts": ["a", "b"]}, {"texts": ["c", "d"]}, {"texts": ["e", "a"]}]
