"""The load-test harness: stability rule, percentiles, and a short real run of the runner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from loadtests.steady import Window, is_steady, percentile, summarise
from tests.conftest import COMMITTED_MODELS, ROOT, Server


def test_three_windows_within_ten_percent_are_steady() -> None:
    assert not is_steady([Window(1, 100), Window(1, 100)])
    assert is_steady([Window(1, 50), Window(1, 100), Window(1, 95), Window(1, 105)])
    assert not is_steady([Window(1, 80), Window(1, 100), Window(1, 120)])
    assert not is_steady([Window(1, 0), Window(1, 0), Window(1, 0)])


def test_percentiles_from_millisecond_histograms() -> None:
    hist = Counter({1: 50, 2: 40, 10: 9, 100: 1})
    assert percentile(hist, 50) == 1
    assert percentile(hist, 90) == 2
    assert percentile(hist, 99) == 10
    assert percentile(hist, 100) == 100
    s = summarise([Window(2, 10, Counter({5: 10}), Counter({200: 10, 503: 2}))], steady=False)
    assert s["rps"] == 5 and s["statuses"] == {"200": 10, "503": 2} and s["p50_ms"] == 5


def test_runner_produces_csv_summary_and_plot(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "lt"
    subprocess.run([sys.executable, "-m", "loadtests", "--models", str(tiny_repo), "--users", "1,4", "--rates", "20",
                    "--window", "1", "--max-windows", "3", "--cross-check", "4", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    for name in ("summary.md", "results.json", "latency_vs_throughput.png", "A_u4_stats.csv", "B_u4_stats.csv",
                 "A_u4_stats_history.csv"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    a, b = results["results"]
    assert [s["users"] for s in a["closed"]] == [1, 4] and b["config"].startswith("SEQSERVE_MAX_BATCH_SIZE=1")
    assert all(s["rps"] > 0 and s["statuses"].get("200") for s in a["closed"] + a["open"])
    # the raw limit in the precision the server chose for A (the tiny repository has no INT8 graphs)
    assert results["raw"]["best"] > 0 and results["raw"]["precision"] == a["sentiment_precision"] == "fp32"
    summary = (out / "summary.md").read_text()
    assert "A/B" in summary and "raw limit" in summary and "Cross-check" in summary


def test_a_summary_of_other_traffic_says_what_the_lean_client_sent_and_compares_nothing() -> None:
    """With Locust users other than SentimentSingleUser the lean client's figures measure other
    traffic: no cross-check verdict, and the translator's missing batch metrics show as "-", not nan."""
    import argparse

    from loadtests.runner import summary

    step = {"users": 4, "rps": 10.0, "p50_ms": 1.0, "p90_ms": 1.0, "p95_ms": 1.0, "p99_ms": 1.0,
            "statuses": {"200": 40}, "steady": True, "mean_batch_size": float("nan"),
            "mean_queue_wait_ms": float("nan"), "mean_padding_ratio": float("nan")}
    args = argparse.Namespace(classes="TranslationUser", users=[4], rates=[], window=2.0, max_windows=4,
                              cross_check=[4])
    text = summary([{"name": "A", "closed": [step], "open": [], "config": "defaults"}], None, args)
    assert "greedy translations of one text" in text and "nan" not in text
    assert "Cross-check\n\nNot run" in text and "raw limit\n\nNot run" in text
    assert "| yes | - | - | - |" in text


def test_the_streaming_user_times_the_first_event_and_the_whole_stream(committed_server: Server,
                                                                       tmp_path: Path) -> None:
    """loadtests/locustfile.py's StreamingUser against a real server: both entries, no failures."""
    import csv

    prefix = tmp_path / "stream"
    subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
                    "--host", committed_server.url, "-u", "2", "-r", "2", "--run-time", "4s", "--only-summary",
                    "--csv", str(prefix), "StreamingUser"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    with open(f"{prefix}_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ("/v1/translate stream: first event", "/v1/translate stream: whole"):
        assert int(rows[name]["Request Count"]) > 0 and rows[name]["Failure Count"] == "0", rows.get(name)
    first, whole = (float(rows[n]["Median Response Time"]) for n in ("/v1/translate stream: first event",
                                                                     "/v1/translate stream: whole"))
    assert first <= whole


def test_the_grpc_user_calls_both_models_over_the_open_inference_protocol(committed_server: Server,
                                                                           tmp_path: Path) -> None:
    """loadtests/locustfile.py's GrpcInferenceUser against a real server's gRPC port, found from the
    HTTP host and SEQSERVE_GRPC_PORT: both models answered, no failures."""
    import csv
    import os

    prefix = tmp_path / "grpc"
    subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
                    "--host", committed_server.url, "-u", "2", "-r", "2", "--run-time", "4s", "--only-summary",
                    "--csv", str(prefix), "GrpcInferenceUser"], cwd=tmp_path, check=True, capture_output=True,
                   timeout=120, env={**os.environ, "SEQSERVE_GRPC_PORT": str(committed_server.grpc_port)})
    with open(f"{prefix}_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ("grpc sentiment infer", "grpc translate infer"):
        assert int(rows[name]["Request Count"]) > 0 and rows[name]["Failure Count"] == "0", rows.get(name)
        assert rows[name]["Type"] == "grpc"



def test_reload_memory_rolls_versions_and_prints_the_growth_per_cycle(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtests import reload_memory

    reload_memory.main(["--cycles", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("start: ") and lines[1].startswith("cycle 1: ") and lines[2].startswith("cycle 2: ")
    assert lines[-1].startswith("2 cycles: ") and lines[-1].endswith("MiB per cycle")


def test_long_texts_compares_the_ways_to_score_a_text_over_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtests import long_texts
    from tests.conftest import DATA_DIR

    if not (DATA_DIR / "sst2").is_dir():
        pytest.skip("no data sets")
    long_texts.main(["--docs", "24", "--data-dir", str(DATA_DIR)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "of 24" in line]
    assert len(rows) == 2  # one mix of labels per row, an accuracy per way of scoring
    for row in rows:
        accuracies = [float(cell) for cell in row.strip("| ").split(" | ")[1:]]
        assert len(accuracies) == 5 and all(0 <= a <= 1 for a in accuracies)
    assert rows[0].endswith("| 1.000 |")  # documents of one label, scored as served


def test_ab_settings_keep_the_case_of_their_values() -> None:
    """``--ab-env`` lowered whole pairs: config B served /tmp/mr for /tmp/MR, and reported 1.99x."""
    from loadtests.runner import ab_settings

    assert ab_settings(["SEQSERVE_MODEL_REPOSITORY=/tmp/MR", "API_KEYS=Ab=c"]) == {
        "model_repository": "/tmp/MR", "api_keys": "Ab=c"}


def test_load_tools_say_when_they_send_generated_sentences(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtests.inputs import sentiment_texts, translation_texts

    assert len(sentiment_texts(Path("/nonexistent"))) == 872 and len(translation_texts(Path("/nonexistent"))) == 1014
    err = capsys.readouterr().err
    assert err.count("sending generated sentences") == 2 and "/nonexistent/sst2/stsa.binary.dev" in err


def test_a_server_that_does_not_start_says_how_to_see_why() -> None:
    from loadtests.server import ServerProcess

    with pytest.raises(RuntimeError, match=r"(?s)exited with 3.*SEQSERVE_MAX_QUEUE_DELAY_MS=inf .*python -m service"):
        ServerProcess(ROOT / "models", max_queue_delay_ms="inf", grpc_port="0").wait_ready()


def test_a_whole_stream_counts_with_the_status_it_ended_with() -> None:
    """Every stream counted as status 0 ("a connection that failed") in the summaries. In a process
    of its own: importing Locust patches the standard library for gevent."""
    script = ("from loadtests.locustfile import _stream_status as s\n"
              "print(s('event: delta\\ndata: {}\\n\\nevent: result\\ndata: {}\\n\\n'),"
              " s('event: error\\ndata: {\"code\": \"deadline_exceeded\"}\\n\\n'), s('event: delta\\ndata: {}\\n\\n'))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["200", "504", "0"]


def test_the_runner_measures_the_host_it_is_given() -> None:
    """The lean clients took 127.0.0.1 and the text after the last colon of --host."""
    from loadtests.runner import address_of

    assert address_of("http://seqserve.internal:8000") == ("seqserve.internal", 8000)
    assert address_of("http://localhost") == ("localhost", 80)
    with pytest.raises(SystemExit, match="plain HTTP"):
        address_of("https://example.com")
    out = subprocess.run([sys.executable, "-m", "loadtests", "--host", "http://127.0.0.1:1", "--users", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no server answers there" in out.stderr and "Traceback" not in out.stderr


def test_the_load_tools_present_the_api_key_they_are_given(tmp_path: Path) -> None:
    """Against a server run with SEQSERVE_API_KEYS: the Locust users (HTTP and gRPC) send
    SEQSERVE_CLIENT_API_KEY and are answered; the runner, without it, says so before measuring
    rather than measuring 401s."""
    import csv
    import os

    server = Server(COMMITTED_MODELS, api_keys='["k1"]', warmup="false").wait_ready()
    try:
        prefix = tmp_path / "keyed"
        env = {**os.environ, "SEQSERVE_GRPC_PORT": str(server.grpc_port), "SEQSERVE_CLIENT_API_KEY": "k1"}
        subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
                        "--host", server.url, "-u", "2", "-r", "2", "--run-time", "3s", "--only-summary",
                        "--csv", str(prefix), "SentimentSingleUser", "GrpcInferenceUser"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=120, env=env)
        with open(f"{prefix}_stats.csv") as f:
            rows = {row["Name"]: row for row in csv.DictReader(f)}
        for name in ("/v1/sentiment [1]", "grpc sentiment infer"):
            assert int(rows[name]["Request Count"]) > 0 and rows[name]["Failure Count"] == "0", rows.get(name)
        env.pop("SEQSERVE_CLIENT_API_KEY")
        out = subprocess.run([sys.executable, "-m", "loadtests", "--host", server.url, "--users", "1"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 1 and "SEQSERVE_CLIENT_API_KEY is not set" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    finally:
        server.stop()
