"""Where the CPU goes per request: the server's threads and the load generator, under load.

    python -m loadtests.cpu_share [--route sentiment|translate] [--clients 64] [--beam 1]
                                  [--duration 8] [SETTING=value ...]

Starts a server, warms it up, then runs the lean closed-loop client and reads each server
thread's CPU time (user + system, from /proc) and the client's own before and after. Prints
microseconds of CPU per answered request for the event loop (the main thread), each worker or
decode-lane thread, the server in total, and the client. On a machine where client and server share the cores,
this tells which side to make cheaper. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
from pathlib import Path

from loadtests import bench_service  # a module: bench_service uses this one too
from loadtests.http_client import LoadResult
from loadtests.inputs import DATA_DIR, sentiment_texts, translation_texts
from loadtests.server import ROOT, ServerProcess

_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float, float]]:
    """Per thread id: (name, user+system seconds, system seconds)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        user, system = int(fields[11]) / _TICK, int(fields[12]) / _TICK
        out[int(tid)] = (name, user + system, system)
    return out


def server_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a server process so far: (all threads, its main thread = the event loop)."""
    threads = thread_cpu(pid)
    return sum(cpu for _, cpu, _ in threads.values()), threads.get(pid, ("", 0.0, 0.0))[1]


def answered_in_run(result: LoadResult, duration: float, warmup_s: float = 1.0) -> float:
    """Requests a LoadGenerator run answered, its unmeasured warm-up included: CPU read around
    the whole run is divided by this."""
    return result.ok * (duration + warmup_s) / duration


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--route", choices=("sentiment", "translate"), default="sentiment")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--beam", type=int, default=1, help="translate: beam size")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("settings", nargs="*", help="server settings, e.g. translation_scheduler=request")
    args = p.parse_args(argv)

    server = ServerProcess(args.models, settings=dict(kv.split("=", 1) for kv in args.settings)).wait_ready()
    try:
        if args.route == "sentiment":
            texts = sentiment_texts(args.data_dir, "test")

            def run(seconds: float) -> LoadResult:
                return bench_service.http_sentiment(server.port, texts, args.clients, seconds)
        else:
            texts = translation_texts(args.data_dir, "test_2016_flickr")
            random.Random(0).shuffle(texts)

            def run(seconds: float) -> LoadResult:
                return bench_service.http_translate(server.port, texts, args.clients, seconds, args.beam)

        run(2.0)  # warm-up
        before, client_before = thread_cpu(server.proc.pid), own_cpu()
        result = run(args.duration)
        after, client_after = thread_cpu(server.proc.pid), own_cpu()
    finally:
        server.stop()
    answered = answered_in_run(result, args.duration)
    print(f"{args.route}, {args.clients} clients: {result.rps:.1f} req/s, p50 {result.percentile(50) * 1000:.1f} ms")
    total = 0.0
    for tid, (name, cpu, system) in sorted(after.items()):
        used = cpu - before.get(tid, (name, 0.0, 0.0))[1]
        used_system = system - before.get(tid, (name, 0.0, 0.0))[2]
        total += used
        if used > 0.05:  # Python 3.11 does not name OS threads: the main thread is the one with the pid
            label = "event loop (main thread)" if tid == server.proc.pid else f"worker/lane thread {tid}"
            print(f"  {label:28s} {used / answered * 1e6:8.0f} us/request  (system {used_system / answered * 1e6:.0f})")
    print(f"  {'server, all threads':28s} {total / answered * 1e6:8.0f} us/request")
    print(f"  {'load generator':28s} {(client_after - client_before) / answered * 1e6:8.0f} us/request")


if __name__ == "__main__":
    main()
