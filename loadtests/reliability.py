"""Reliability scenarios and their report: overload bursts (mixed, and translation-only with the
refusal latency measured server-side, beside its floor: the same requests against an app that
refuses at once behind the same HTTP protocol) and graceful shutdown under load.

    python -m loadtests.reliability [--models models] [--scenario overload|burst|floor|shutdown|bulk ...]

Each scenario starts a real server on 127.0.0.1, sends a bounded burst, and prints: requests
sent, results, rejects by status, lost (accepted but never answered: must be 0), connection
errors, and the health endpoint's latency measured meanwhile from a separate process (so the
load generator's own event loop does not inflate it). Used by tests/test_reliability.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtests.cpu_share import server_cpu
from loadtests.http_client import percentile
from loadtests.server import ROOT, ServerProcess

SCENARIOS = ("overload", "burst", "floor", "shutdown", "bulk")
LONG = "A man in a blue shirt and a woman in a red dress are walking their two dogs in the park. "
# one sentence each (the translator decodes each sentence of a text as its own job): the number
# goes inside it, not after its full stop
ONE = LONG.rstrip(". ")
TWICE = f"{ONE}, and a man in a blue shirt and a woman in a red dress are walking their two dogs in the park"

_PROBE = """
import json, sys, time, httpx
url, seconds = sys.argv[1], float(sys.argv[2])
lat, bad = [], 0
end = time.monotonic() + seconds
with httpx.Client(timeout=5) as c:
    while time.monotonic() < end:
        t = time.perf_counter()
        try:
            ok = c.get(url).status_code == 200
        except httpx.HTTPError:
            ok = False
        lat.append(time.perf_counter() - t)
        bad += not ok
        time.sleep(0.01)
print(json.dumps({"latencies": lat, "failures": bad}))
"""


@dataclass
class ScenarioReport:
    name: str
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    lost: int = 0
    health: list[float] = field(default_factory=list)
    health_failures: int = 0
    exit_code: int | None = None
    seconds: float = 0.0
    note: str = ""

    def health_p(self, q: float) -> float:
        return percentile(self.health, q)

    def lines(self) -> list[str]:
        rejects = {s: n for s, n in sorted(self.statuses.items()) if s != 200}
        out = [f"## {self.name}",
               f"requests sent: {self.sent}; results (200): {self.statuses.get(200, 0)}; "
               f"rejects by status: {rejects or 'none'}; connection errors: {self.connection_errors}; "
               f"lost: {self.lost}",
               f"health (/v2/health/ready) during the scenario: {len(self.health)} probes, "
               f"p50 {self.health_p(50) * 1000:.1f} ms, p99 {self.health_p(99) * 1000:.1f} ms, "
               f"max {max(self.health, default=float('nan')) * 1000:.1f} ms, failures {self.health_failures}",
               f"wall time {self.seconds:.1f} s"]
        if self.exit_code is not None:
            out.append(f"server exit code: {self.exit_code}")
        if self.note:
            out.append(self.note)
        return out


def _start_probe(url: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _PROBE, url, str(seconds)], stdout=subprocess.PIPE, text=True)


def _finish_probe(probe: subprocess.Popen[str], report: ScenarioReport) -> None:
    out, _ = probe.communicate(timeout=60)
    data = json.loads(out)
    report.health, report.health_failures = data["latencies"], data["failures"]


async def _burst(url: str, count: int, report: ScenarioReport) -> list[httpx.Response | BaseException]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=count)) as client:

        async def call(i: int) -> httpx.Response:
            if i % 2:
                return await client.post(f"{url}/v1/sentiment", json={"text": f"{LONG} {i}"})
            return await client.post(f"{url}/v1/translate", json={"text": f"{TWICE} {i}.", "beam_size": 5})

        report.sent += count
        return list(await asyncio.gather(*(call(i) for i in range(count)), return_exceptions=True))


def _tally(responses: list[httpx.Response | BaseException], report: ScenarioReport) -> None:
    for r in responses:
        if isinstance(r, httpx.Response):
            report.statuses[r.status_code] += 1
        elif isinstance(r, httpx.ConnectError):
            report.connection_errors += 1  # never reached the server: not accepted
        else:
            report.lost += 1  # accepted (connected) but no answer


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def overload(models: Path, burst: int = 400, queue_size: int = 16, rounds: int = 3) -> ScenarioReport:
    """Bursts far beyond capacity against a small queue: results or fast 503s, nothing lost, and
    the server's memory back at its level after the first burst (no growth per burst)."""
    report = ScenarioReport(f"overload: {rounds} bursts of {burst} mixed requests, queue size {queue_size}")
    server = ServerProcess.ready(models, max_queue_size=str(queue_size))
    try:
        url = server.url
        probe = _start_probe(f"{url}/v2/health/ready", 4.0 * rounds + 2)
        time.sleep(0.5)
        baseline = rss_mb(server.proc.pid)
        after: list[float] = []
        start = time.perf_counter()
        for _ in range(rounds):
            _tally(asyncio.run(_burst(url, burst, report)), report)
            time.sleep(0.5)
            after.append(rss_mb(server.proc.pid))
        report.seconds = time.perf_counter() - start
        _finish_probe(probe, report)
        report.note = (f"server RSS: {baseline:.0f} MB before, after each burst "
                       + ", ".join(f"{x:.0f}" for x in after) + " MB")
    finally:
        report.exit_code = server.stop()
    return report


@dataclass
class OneShots:
    """What the one-connection-one-request client (``_one_shot``) saw: statuses (0: could not
    connect), the time from sending to the answer by status, and requests sent but never answered."""

    statuses: Counter[int] = field(default_factory=Counter)
    client_s: dict[int, list[float]] = field(default_factory=dict)  # by status, send to answer
    lost: int = 0


@dataclass(kw_only=True)
class BurstReport(OneShots):
    """A translation-only burst against a small queue: statuses, and how fast refusals came."""

    name: str
    server_refusal_ms: list[float] = field(default_factory=list)  # 503s, from the access log
    loop_lag_p99_ms: float = float("nan")
    lag_probes: int = 0  # the loop's 50 ms timer probes during the burst
    lag_probes_over_20ms: int = 0
    seconds: float = 0.0
    loop_cpu_s: float = 0.0  # the server's event loop (main thread), from /proc, over the burst

    def lines(self) -> list[str]:
        refused = sorted(self.client_s.get(503, []))
        return [f"## {self.name}",
                f"statuses: {dict(sorted(self.statuses.items()))}; lost (accepted, no answer): {self.lost}",
                f"refusals (503) server-side: p50 {percentile(self.server_refusal_ms, 50):.2f} ms, "
                f"p99 {percentile(self.server_refusal_ms, 99):.2f} ms, "
                f"max {max(self.server_refusal_ms, default=0):.2f} ms "
                f"(from when the server read the request to its answer, access log)",
                f"refusals (503) at the client: p50 {percentile(refused, 50) * 1000:.0f} ms, "
                f"p99 {percentile(refused, 99) * 1000:.0f} ms",
                f"results (200) at the client: p50 {percentile(self.client_s.get(200, []), 50):.2f} s, "
                f"max {max(self.client_s.get(200, []), default=0):.2f} s",
                f"event-loop lag p99 during the burst: <= {self.loop_lag_p99_ms:g} ms (histogram bucket; "
                f"{self.lag_probes_over_20ms} of {self.lag_probes} probes over 20 ms)",
                f"event loop CPU over the burst: {self.loop_cpu_s * 1000:.0f} ms, "
                f"{self.loop_cpu_s / max(sum(self.statuses.values()), 1) * 1e6:.0f} us a request (each on a "
                "fresh connection: accept, parse, answer, close)",
                f"wall time {self.seconds:.1f} s"]


def _lag_buckets(url: str) -> dict[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {float(s.labels["le"]): s.value for family in text_string_to_metric_families(text)
            if family.name == "seqserve_event_loop_lag_seconds" for s in family.samples
            if s.name.endswith("_bucket")}


def _probes(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    """The timer probes between two scrapes, by bucket bound (cumulative, lowest bound first)."""
    return {le: after[le] - before.get(le, 0.0) for le in sorted(after)}


def _probes_over(before: dict[float, float], after: dict[float, float], seconds: float) -> tuple[int, int]:
    """(probes, probes later than ``seconds``) between two scrapes."""
    counts = _probes(before, after)
    total = counts.get(float("inf"), 0.0)
    return int(total), int(total - counts.get(seconds, 0.0))


def _p99_bucket(before: dict[float, float], after: dict[float, float]) -> float:
    """The smallest bucket bound (ms) holding 99% of the timer probes between two scrapes."""
    counts = _probes(before, after)
    total = counts.get(float("inf"), 0.0)
    return next((le * 1000 for le, n in counts.items() if total and n >= 0.99 * total), float("nan"))


async def _one_shot(port: int, request: bytes, out: OneShots, bodies: list[bytes] | None = None) -> None:
    """One connection, one request: the time from sending it to its answer, by status (and the
    answer's body, into ``bodies`` if given)."""
    from loadtests.http_client import Connection

    try:
        conn = await Connection.open("127.0.0.1", port)
    except OSError:
        out.statuses[0] += 1
        return
    sent = time.perf_counter()
    try:
        status, body = await conn.send(request)
    except (OSError, asyncio.IncompleteReadError):
        out.lost += 1
        return
    finally:
        conn.close()
    out.statuses[status] += 1
    out.client_s.setdefault(status, []).append(time.perf_counter() - sent)
    if bodies is not None:
        bodies.append(body)


def _burst_requests(burst: int, beam_size: int) -> list[bytes]:
    """The burst's requests: distinct long sources, so that nothing is answered from a repeat."""
    from loadtests.http_client import encode_post

    return [encode_post("/v1/translate", {"text": f"{ONE} {i}.", "beam_size": beam_size}) for i in range(burst)]


def translation_burst(models: Path, burst: int = 1000, queue_size: int = 8, beam_size: int = 5) -> BurstReport:
    """``burst`` concurrent beam-search translations against a queue of ``queue_size`` texts, with the
    default request timeout: every request gets 200 or 503 (none 504), refusals come at once."""
    report = BurstReport(name=f"translation burst: {burst} concurrent beam-{beam_size} translations, "
                         f"queue size {queue_size}")
    server = ServerProcess(models, capture_output=True, max_queue_size=str(queue_size), access_log="true")
    try:
        server.wait_ready()
        requests = _burst_requests(burst, beam_size)
        before = _lag_buckets(server.url)

        async def scenario() -> None:
            await asyncio.gather(*(_one_shot(server.port, r, report) for r in requests))

        loop_before = server_cpu(server.proc.pid)[1]
        start = time.perf_counter()
        asyncio.run(scenario())
        report.seconds = time.perf_counter() - start
        report.loop_cpu_s = server_cpu(server.proc.pid)[1] - loop_before
        after = _lag_buckets(server.url)
        report.loop_lag_p99_ms = _p99_bucket(before, after)
        report.lag_probes, report.lag_probes_over_20ms = _probes_over(before, after, 0.02)
    finally:
        server.stop()
    for line in server.output().splitlines():
        try:
            entry = json.loads(line) if line.startswith("{") else {}
        except json.JSONDecodeError:  # not an access-log line (a traceback's, say)
            continue
        if entry.get("status") == 503 and entry.get("path") == "/v1/translate":
            report.server_refusal_ms.append(entry["latency_ms"])
    return report


@dataclass
class FloorReport:
    """The translation burst's requests against loadtests/floor_app.py: what the HTTP stack alone
    costs them on this machine."""

    burst: int
    in_line: bool = False  # with the server's pass budget: waits after the read are counted
    statuses: Counter[int] = field(default_factory=Counter)
    server_ms: list[float] = field(default_factory=list)  # from each answer's body
    client_s: list[float] = field(default_factory=list)
    lost: int = 0  # sent, no answer

    def lines(self) -> list[str]:
        budget = ("with the server's pass budget: a wait in line after the read is counted" if self.in_line
                  else "no pass budget: a wait before the read, in the kernel, is not seen")
        return [f"## floor: the same {self.burst} requests against an app that refuses at once "
                f"(loadtests/floor_app.py, the same HTTP protocol, no model; {budget})",
                f"statuses: {dict(sorted(self.statuses.items()))} (0: could not connect); lost: {self.lost}",
                f"server-side (from the read to the answer): p50 {percentile(self.server_ms, 50):.2f} ms, "
                f"p99 {percentile(self.server_ms, 99):.2f} ms; at the client: p50 "
                f"{percentile(self.client_s, 50) * 1000:.0f} ms, p99 {percentile(self.client_s, 99) * 1000:.0f} ms"]


def burst_floor(burst: int = 1000, in_line: bool = False) -> FloorReport:
    """The translation burst's requests, each on its own connection, against an app that refuses
    them at once behind seqserve's HTTP protocol (loadtests/floor_app.py), with the server's pass
    budget or without."""
    from loadtests.server import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "loadtests.floor_app", "--port", str(port),
                               *(["--in-line"] if in_line else [])], cwd=ROOT)
    shots = OneShots()
    bodies: list[bytes] = []
    try:
        _wait_for_port(port, server)
        requests = _burst_requests(burst, beam_size=5)

        async def scenario() -> None:
            await asyncio.gather(*(_one_shot(port, r, shots, bodies) for r in requests))

        asyncio.run(scenario())
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return FloorReport(burst, in_line, shots.statuses, [float(b) for b in bodies],
                       [s for times in shots.client_s.values() for s in times], shots.lost)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the floor server exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the floor server did not listen on port {port} within {timeout_s:g} s")


def shutdown(models: Path, requests: int = 160, after_s: float = 0.3, **settings: str) -> ScenarioReport:
    """SIGTERM while requests are queued and decoding: every accepted request gets its result.
    ``settings`` go to the server (``workers="2"``: the supervisor passes SIGTERM on to each)."""
    report = ScenarioReport(f"graceful shutdown: SIGTERM {after_s} s into {requests} requests"
                            + "".join(f", {k}={v}" for k, v in settings.items()))
    server = ServerProcess.ready(models, settings=settings)
    url = server.url
    probe = _start_probe(f"{url}/v2/health/ready", after_s + 1.0)  # probes after SIGTERM fail: listener closed

    async def scenario() -> list[httpx.Response | BaseException]:
        task = asyncio.create_task(_burst(url, requests, report))
        await asyncio.sleep(after_s)
        server.proc.send_signal(signal.SIGTERM)
        return await task

    start = time.perf_counter()
    _tally(asyncio.run(scenario()), report)
    report.seconds = time.perf_counter() - start
    report.exit_code = server.proc.wait(timeout=120)
    report.note = (f"SIGTERM at {after_s} s; answers kept coming for {report.seconds - after_s:.2f} s more "
                   "(the drain); health probes after SIGTERM fail by design (listener closed)")
    _finish_probe(probe, report)
    return report


@dataclass
class BulkReport:
    """Short sentiment requests sent while one request of long reviews is being scored."""

    name: str
    bulk_status: int = 0
    bulk_s: float = 0.0
    bulk_sentences: int = 0
    short_s: list[float] = field(default_factory=list)  # each short request's time, sent during the bulk one
    short_failed: int = 0

    def lines(self) -> list[str]:
        return [f"## {self.name}",
                f"the bulk request: {self.bulk_status} in {self.bulk_s:.2f} s ({self.bulk_sentences} sentences)",
                f"short requests during it: {len(self.short_s)}, p50 {percentile(self.short_s, 50) * 1000:.0f} ms, "
                f"p99 {percentile(self.short_s, 99) * 1000:.0f} ms, max {max(self.short_s, default=0) * 1000:.0f} ms; "
                f"failed {self.short_failed}"]


# a mixed review over the sentiment model's 256 subwords: scored sentence by sentence (25 of them
# with the bulk request's "Take i.")
REVIEW = " ".join(["The first act drags, and the dialogue is often clumsy.",
                   "But the second half is a triumph of acting and music."] * 12)
# a paragraph of 16 captions for the translator, each sentence its own job
PARAGRAPH = " ".join(["A man in a blue shirt is walking his dog in the park.", "Two children are playing in the sand.",
                      "A woman is riding a bike down the street.", "A group of people are standing outside a building."]
                     * 4)


def bulk(models: Path, route: str = "sentiment", texts: int = 40, every_s: float = 0.01) -> BulkReport:
    """One request of ``texts`` long texts (about a thousand sentences: reviews to score, or
    paragraphs to translate greedily) and, while it runs, a short request every ``every_s`` on the
    same route: what an interactive client waits behind a bulk one (a request bigger than a batch
    takes turns: ``AnsweredFromThreads._accept_all`` in service/batching.py)."""
    translate = route == "translate"
    report = BulkReport(f"bulk {route}: one request of {texts} long texts, a short request every "
                        f"{every_s * 1000:g} ms")
    server = ServerProcess.ready(models)
    big_body: dict[str, object] = ({"texts": [PARAGRAPH] * texts, "beam_size": 1} if translate else
                                   {"texts": [f"{REVIEW} Take {i}." for i in range(texts)]})
    short_body = {"text": "A dog runs.", "beam_size": 1} if translate else {"text": "Great film."}

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            async def big() -> None:
                start = time.perf_counter()
                r = await client.post(f"/v1/{route}", json=big_body)
                report.bulk_s, report.bulk_status = time.perf_counter() - start, r.status_code
                results = r.json().get("results", [])
                report.bulk_sentences = (texts * 16 if translate and results else
                                         sum(x.get("sentences", 1) for x in results))

            task = asyncio.create_task(big())
            await asyncio.sleep(every_s)
            while not task.done():
                start = time.perf_counter()
                r = await client.post(f"/v1/{route}", json=short_body)
                if not task.done():
                    report.short_s.append(time.perf_counter() - start)
                report.short_failed += r.status_code != 200
                await asyncio.sleep(every_s)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    return report


class _Both:
    def __init__(self, *reports: BulkReport | FloorReport) -> None:
        self.reports = reports

    def lines(self) -> list[str]:
        return [line for report in self.reports for line in [*report.lines(), ""]][:-1]


def _bulk_both(models: Path) -> _Both:
    return _Both(bulk(models, "sentiment"), bulk(models, "translate", every_s=0.05))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--out", type=Path, help="default: reports/reliability.md, or with --scenario "
                                            "reports/reliability-<scenarios>.md (the full report stays)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS,
                   help="run only this scenario (repeatable; default: all, in this order: "
                        f"{', '.join(SCENARIOS)})")
    args = p.parse_args(argv)
    runs: dict[str, Callable[[], ScenarioReport | BurstReport | FloorReport | _Both]] = {
        "overload": lambda: overload(args.models), "burst": lambda: translation_burst(args.models),
        "floor": lambda: _Both(burst_floor(), burst_floor(in_line=True)),
        "shutdown": lambda: shutdown(args.models), "bulk": lambda: _bulk_both(args.models)}
    lines = ["# seqserve reliability report", ""]
    for name in SCENARIOS:
        if args.scenario and name not in args.scenario:
            continue
        for line in [*runs[name]().lines(), ""]:  # each scenario's lines as soon as it has run
            print(line, flush=True)
            lines.append(line)
    out = args.out or ROOT / "reports" / ("reliability.md" if not args.scenario else
                                          f"reliability-{'-'.join(sorted(set(args.scenario)))}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
