"""Where the CPU goes per request: the server's threads and the load generator, under load.

    python -m loadtests.cpu_share [--route sentiment|translate] [--clients 64] [--beam 1] [--texts 1]
                                  [--duration 8] [SETTING=value ...]
                                  [--versus [SETTING=value ...]] [--versus-checkout DIR] [--rounds 4]

Starts a server (with the access log on, as `make serve` and `make bench` run it; `access_log=false`
turns it off), warms it up, then runs the lean closed-loop client and reads each server
thread's CPU time (user + system, from /proc) and the client's own before and after. Prints
microseconds of CPU per answered request for the event loop (the main thread), each worker or
decode-lane thread, the server in total and the part of it inside ONNX Runtime's runs (the
server's seqserve_model_cpu_seconds_total), and the client. On a machine where client and
server share the cores, this tells which side to make cheaper. Each thread's line also says how
much of the run it spent on a core and how much runnable but waiting for one (the kernel's
schedstat; the rest it slept: for work, a lock or the GIL) and how often a request it went to
sleep (its voluntary context switches: a thread that hands the GIL back and forth sleeps more
than once a request), and the last line how much of the
machine's cores stayed idle: whether the cores, or one thread, set the pace. Linux only (reads /proc).

With ``--versus`` (other settings) or ``--versus-checkout`` (other code), a second server B is
measured against A in alternating rounds, and the medians and their ratios B / A are printed:
how a change moves throughput and CPU per request, on a machine whose speed drifts. Each round
starts a fresh pair of servers (the first of them in turn A, then B): on the 2-core VM a server
process keeps a speed of its own for its life, and two started alike from the same code differed
by 3-5 % over ten alternating rounds (B / A 0.95-1.04 in five such runs; docs/benchmarks.md,
stop 52), so a comparison of one process each measured mostly which one was luckier.
``--same-servers`` keeps one of each for every round (faster; for a large difference).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from loadtests import bench_service  # a module: bench_service uses this one too
from loadtests.http_client import LoadResult, encode_post
from loadtests.inputs import DATA_DIR, sentiment_texts, translation_texts
from loadtests.load_generator import LoadGenerator
from loadtests.server import AS_DEPLOYED, ROOT, ServerProcess, metric_values, server_rounds

_TICK = os.sysconf("SC_CLK_TCK")


class ThreadCpu(NamedTuple):
    name: str
    cpu_s: float  # user + system
    system_s: float
    # runnable but not running: waiting for a core (the kernel's schedstat; 0 where it keeps none)
    waited_s: float = 0.0
    # times it went to sleep (voluntary context switches: for work, a lock, the GIL)
    sleeps: int = 0


def thread_cpu(pid: int) -> dict[int, ThreadCpu]:
    """Per thread id: its name, CPU seconds (user + system, and system), seconds spent waiting
    for a core and times it went to sleep."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        user, system = int(fields[11]) / _TICK, int(fields[12]) / _TICK
        out[int(tid)] = ThreadCpu(name, user + system, system, _waited_s(pid, tid), _sleeps(pid, tid))
    return out


def _sleeps(pid: int, tid: str) -> int:
    """The thread's voluntary context switches so far (0 where the kernel does not say)."""
    try:
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def _waited_s(pid: int, tid: str) -> float:
    """Seconds the thread has been runnable without a core (0 where the kernel keeps no schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def cores_idle_s() -> tuple[float, float]:
    """The machine's CPU seconds so far: (idle, all), from /proc/stat (idle and iowait count as idle)."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (ticks[3] + ticks[4]) / _TICK, sum(ticks[:8]) / _TICK  # after steal come guest times, already in user


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: with SEQSERVE_WORKERS > 1 the server is a supervisor whose
    worker processes (service/workers.py) do the serving."""
    tree, todo = [], [pid]
    while todo:
        process = todo.pop()
        tree.append(process)
        with contextlib.suppress(OSError):  # it ended meanwhile
            for tid in os.listdir(f"/proc/{process}/task"):
                todo += [int(child) for child in Path(f"/proc/{process}/task/{tid}/children").read_text().split()]
    return tree


def tree_cpu(pid: int) -> tuple[dict[int, ThreadCpu], set[int]]:
    """``thread_cpu`` over the server's processes (thread ids are unique across processes), and
    the processes, whose main threads are the event loops (a supervisor's own, which mostly
    sleeps, is counted with them)."""
    processes = process_tree(pid)
    return {tid: used for process in processes for tid, used in thread_cpu(process).items()}, set(processes)


def cpu_sums(threads: dict[int, ThreadCpu], main_tids: set[int]) -> tuple[float, float]:
    """CPU seconds of ``threads``: (all of them, the event loops among them)."""
    return (sum(t.cpu_s for t in threads.values()),
            sum(t.cpu_s for tid, t in threads.items() if tid in main_tids))


def server_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a server so far, all its processes: (all threads, the event loops)."""
    return cpu_sums(*tree_cpu(pid))


def answered_in_run(result: LoadResult, duration: float, warmup_s: float = 1.0) -> float:
    """Requests a LoadGenerator run answered, its unmeasured warm-up included: CPU read around
    the whole run is divided by this."""
    return result.ok * (duration + warmup_s) / duration


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Batches:
    """The dynamic batcher's batches, as /metrics counts them: how many ran, the texts in them, and
    the sum of their padded shares (``seqserve_padding_ratio``: padded positions over rows x the
    longest). Counters: a run's are the difference of two readings, several runs' the sum."""

    runs: float = 0.0
    texts: float = 0.0
    padded_shares: float = 0.0

    def __sub__(self, earlier: Batches) -> Batches:
        return Batches(self.runs - earlier.runs, self.texts - earlier.texts, self.padded_shares - earlier.padded_shares)

    def __add__(self, other: Batches) -> Batches:
        return Batches(self.runs + other.runs, self.texts + other.texts, self.padded_shares + other.padded_shares)

    @property
    def mean_size(self) -> float:
        """Texts a batch (0 where none ran)."""
        return self.texts / self.runs if self.runs else 0.0

    @property
    def padding(self) -> float:
        """The padded share of a batch's positions, the mean over the batches (0 where none ran): the
        LSTM runs every padded position as if it were a subword."""
        return self.padded_shares / self.runs if self.runs else 0.0


@dataclass
class Share:
    """One measured run: throughput and CPU seconds per thread, server and client."""

    result: LoadResult
    duration: float
    server: dict[int, ThreadCpu]  # tid -> what each thread used in the run
    client_s: float
    main_tids: set[int]  # the processes' main threads: the event loops
    batches: Batches = Batches()  # the classifier's, in the run
    model_s: float = 0.0  # CPU inside ONNX Runtime's runs (seqserve_model_cpu_seconds_total), every model
    cores_idle: float = 0.0  # the machine's idle share of its cores in the run
    wall_s: float = 0.0  # the run's length, its warm-up included (what the threads' shares are of)

    @property
    def answered(self) -> float:
        return answered_in_run(self.result, self.duration)

    def per_request_us(self, seconds: float) -> float:
        return seconds / self.answered * 1e6

    @property
    def server_us(self) -> float:
        return self.per_request_us(cpu_sums(self.server, self.main_tids)[0])

    @property
    def loop_us(self) -> float:
        return self.per_request_us(cpu_sums(self.server, self.main_tids)[1])

    @property
    def model_us(self) -> float:
        return self.per_request_us(self.model_s)


def measure(server: ServerProcess, run: Callable[[float], LoadResult], duration: float) -> Share:
    """One run of ``duration`` seconds (after the load generator's own warm-up second), with the CPU
    each server thread and the client used meanwhile."""
    pid = server.proc.pid
    model_before, batches_before = counters(server.url)  # read outside the CPU measured
    (before, _), client_before, idle_before, started = tree_cpu(pid), own_cpu(), cores_idle_s(), time.monotonic()
    result = run(duration)
    (after, main_tids), client_after, idle_after, wall = tree_cpu(pid), own_cpu(), cores_idle_s(), time.monotonic()
    model_after, batches_after = counters(server.url)
    used = {}
    for tid, now in after.items():
        was = before.get(tid, ThreadCpu(now.name, 0.0, 0.0))
        used[tid] = ThreadCpu(now.name, now.cpu_s - was.cpu_s, now.system_s - was.system_s, now.waited_s - was.waited_s,
                              now.sleeps - was.sleeps)
    idle = (idle_after[0] - idle_before[0]) / max(idle_after[1] - idle_before[1], 1e-9)
    return Share(result, duration, used, client_after - client_before, main_tids, batches_after - batches_before,
                 model_after - model_before, idle, wall - started)


def counters(url: str, **labels: str) -> tuple[float, Batches]:
    """From one read of /metrics (every model unless ``model=`` names one): the CPU seconds the
    server's threads have spent inside ONNX Runtime's runs so far, and the dynamic batcher's
    batches."""
    model_s, *batches = metric_values(url, ("seqserve_model_cpu_seconds_total", "seqserve_batch_size_count",
                                            "seqserve_batch_size_sum", "seqserve_padding_ratio_sum"), **labels)
    return model_s, Batches(*batches)


def report(route: str, clients: int, share: Share) -> None:
    result = share.result
    print(f"{route}, {clients} clients: {result.rps:.1f} req/s, p50 {result.percentile(50) * 1000:.1f} ms")
    one_process = len(share.main_tids) == 1
    for tid, used in sorted(share.server.items()):
        if used.cpu_s > 0.05:  # Python 3.11 does not name OS threads: the main thread is the one with the pid
            if tid not in share.main_tids:
                label = f"worker/lane thread {tid}"
            else:
                label = "event loop (main thread)" if one_process else f"main thread of process {tid}"
            # of the run's time: on a core, and runnable but waiting for one (the rest it slept:
            # for work, a lock or the GIL)
            print(f"  {label:28s} {share.per_request_us(used.cpu_s):8.0f} us/request  "
                  f"(system {share.per_request_us(used.system_s):.0f}; on a core {used.cpu_s / share.wall_s:.0%} "
                  f"of the run, waiting for one {used.waited_s / share.wall_s:.0%}; "
                  f"{used.sleeps / share.answered:.2f} sleeps a request)")
    print(f"  {'server, all threads':28s} {share.server_us:8.0f} us/request")
    print(f"  {'of which inside the model':28s} {share.model_us:8.0f} us/request")
    print(f"  {'load generator':28s} {share.per_request_us(share.client_s):8.0f} us/request")
    batches = share.batches
    if batches.mean_size:
        print(f"  {'mean batch':28s} {batches.mean_size:8.1f} texts, {batches.padding:.0%} of its positions padding")
    print(f"  {'cores idle':28s} {share.cores_idle:8.0%} of the run (the whole machine, /proc/stat)")


Run = Callable[[float], LoadResult]


def compare(starts: dict[str, Callable[[], ServerProcess]], runner: Callable[[int], Run], rounds: int,
            duration: float, fresh: bool = True) -> None:
    """Servers A and B (``starts``: each starts one and returns once it is ready) in alternating
    rounds (A B, B A, ...): on a machine whose speed drifts, only ratios taken within one run mean
    anything. ``fresh``: a new pair every round (loadtests/server.py ``server_rounds``), so that each
    side's figure is a median over as many processes as rounds. Prints each round, then medians and
    B / A."""
    shares: dict[str, list[Share]] = {name: [] for name in starts}
    runs: dict[str, Run] = {}
    with server_rounds(starts, rounds, fresh) as each_round:
        for r, (order, servers, new) in enumerate(each_round):
            if new:
                runs = {name: runner(server.port) for name, server in servers.items()}
                for name in order:
                    runs[name](2.0)  # warm-up
            for name in order:
                share = measure(servers[name], runs[name], duration)
                shares[name].append(share)
                print(f"round {r + 1} {name}: {share.result.rps:8.1f} req/s, server {share.server_us:5.0f} "
                      f"us/request, event loop {share.loop_us:4.0f}, model {share.model_us:4.0f}"
                      f"{_batch_note(share.batches.mean_size)}", flush=True)
    medians = {name: (statistics.median(s.result.rps for s in got), statistics.median(s.server_us for s in got),
                      statistics.median(s.loop_us for s in got), statistics.median(s.model_us for s in got),
                      statistics.median(s.batches.mean_size for s in got))
               for name, got in shares.items()}
    for name, (rps, server_us, loop_us, model_us, mean_batch) in medians.items():
        print(f"{name} (median of {rounds}): {rps:.1f} req/s, server {server_us:.0f} us/request, "
              f"event loop {loop_us:.0f}, model {model_us:.0f}{_batch_note(mean_batch)}")
    a, b = medians["A"], medians["B"]
    print(f"B / A: req/s {b[0] / a[0]:.3f}, server CPU per request {b[1] / a[1]:.3f}, event loop {b[2] / a[2]:.3f}, "
          f"model {b[3] / a[3] if a[3] else float('nan'):.3f}")


def _batch_note(mean_batch: float) -> str:
    return f", mean batch {mean_batch:.1f}" if mean_batch else ""


def sentiment_lists(sentences: list[str], per_request: int) -> list[bytes]:
    """POST /v1/sentiment requests of ``per_request`` sentences each (``texts``), the sentences
    taken in turn: a client scoring a list at a time, whose texts the batcher runs together."""
    count = len(sentences)
    return [encode_post("/v1/sentiment", {"texts": [sentences[(start + i) % count] for i in range(per_request)]})
            for start in range(0, count, per_request)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--route", choices=("sentiment", "translate"), default="sentiment")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--beam", type=int, default=1, help="translate: beam size")
    p.add_argument("--texts", type=int, default=1, help=(
        "sentiment: SST-2 test sentences a request ({\"texts\": [...]} where more than one); the CPU "
        "figures are then a request's, of that many texts"))
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("settings", nargs="*", help="server settings, e.g. translation_scheduler=request")
    p.add_argument("--versus", nargs="*", metavar="SETTING=value", help=(
        "compare with a second server (B) that has these settings on top of the first one's (A)"))
    p.add_argument("--versus-checkout", type=Path,
                   help="B runs this checkout's service with its own .venv and models/ (not --models; "
                        "run `make int8` there first, or B serves fp32 where A serves INT8)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds when comparing")
    p.add_argument("--same-servers", action="store_true",
                   help="when comparing, one server of each side for every round instead of a fresh pair a round")
    args = p.parse_args(argv)

    # as deployed (the access log on, which the serving cost counts), unless the arguments say
    settings = {**AS_DEPLOYED, **dict(kv.split("=", 1) for kv in args.settings)}
    if args.texts < 1:
        p.error("--texts must be at least 1")
    if args.texts > 1 and args.route != "sentiment":
        p.error("--texts is for --route sentiment (a translation request is one text)")
    if args.route == "sentiment":
        sentences = sentiment_texts(args.data_dir, "test")
        requests = sentiment_lists(sentences, args.texts) if args.texts > 1 else \
            bench_service.sentiment_requests(sentences)

        def runner(port: int) -> Run:
            return lambda seconds: LoadGenerator().run(port, requests, args.clients, seconds)[0]
    else:
        texts = translation_texts(args.data_dir, "test_2016_flickr")
        random.Random(0).shuffle(texts)

        def runner(port: int) -> Run:
            return lambda seconds: bench_service.http_translate(port, texts, args.clients, seconds, args.beam)

    versus = dict(kv.split("=", 1) for kv in args.versus or [])

    def start_a() -> ServerProcess:
        return ServerProcess.ready(args.models, settings=settings)

    def start_b() -> ServerProcess:
        # another checkout serves its own models/: the same trained weights, in the card format its code reads
        models = args.versus_checkout.resolve() / "models" if args.versus_checkout else args.models
        return ServerProcess.ready(models, settings={**settings, **versus}, checkout=args.versus_checkout)

    if args.versus is not None or args.versus_checkout is not None:
        compare({"A": start_a, "B": start_b}, runner, args.rounds, args.duration, fresh=not args.same_servers)
        return
    server = start_a()
    try:
        run = runner(server.port)
        run(2.0)  # warm-up
        share = measure(server, run, args.duration)
    finally:
        server.stop()
    report(args.route, args.clients, share)


if __name__ == "__main__":
    main()
