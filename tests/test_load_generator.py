"""loadtests/load_generator.py: load from one process or several, against a real server."""

from __future__ import annotations

from loadtests.http_client import LoadResult, encode_post
from loadtests.load_generator import LoadGenerator
from tests.conftest import Server


def test_parts_measured_side_by_side_add_up() -> None:
    a = LoadResult(3, 2.0, latencies=[0.1, 0.2], statuses={200: 2}, items=2)
    b = LoadResult(2, 2.0, latencies=[0.3], statuses={200: 1, 503: 4}, items=1)
    both = LoadResult.side_by_side([a, b])
    assert (both.concurrency, both.seconds, both.items, both.statuses) == (5, 2.0, 3, {200: 3, 503: 4})
    assert both.rps == 1.5  # answers of both over the one interval, not over 4 s


def test_two_processes_share_the_clients_and_the_sentences(committed_server: Server) -> None:
    requests = [encode_post("/v1/sentiment", {"text": f"sentence number {i}"}) for i in range(40)]
    with LoadGenerator(processes=2) as generator:
        result, bodies = generator.run(committed_server.port, requests, clients=5, duration=0.8, keyed=True)
    assert result.concurrency == 5 and result.ok > 0 and set(result.statuses) == {200}
    # process 0 sends the even sentences, process 1 the odd ones: both ran, and keys map to bodies
    keys = {key for key, _ in result.tagged}
    assert any(k % 2 == 0 for k in keys) and any(k % 2 == 1 for k in keys)
    assert set(bodies) <= keys and b'"label"' in next(iter(bodies.values()))
