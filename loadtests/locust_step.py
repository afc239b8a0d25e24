"""One closed-loop step with Locust as a library, in its own process (gevent stays out of the
runner): N users until steady or out of windows; writes Locust's CSV files and a JSON summary.

    python -m loadtests.locust_step --host http://127.0.0.1:8000 --users 16 --classes SentimentUser \\
        --csv reports/loadtest/a_u16 --json reports/loadtest/a_u16.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
from locust import stats as locust_stats
from locust.env import Environment

from loadtests import locustfile
from loadtests.steady import Window, is_steady, summarise


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--classes", default="SentimentUser,TranslationUser,OpenInferenceUser")
    p.add_argument("--window", type=float, default=3.0)
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--csv", required=True, help="prefix for Locust's CSV files")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)

    classes = [getattr(locustfile, name) for name in args.classes.split(",")]
    for cls in classes:
        cls.wait_time = staticmethod(lambda *_: 0)  # closed loop: next request as soon as answered
    env = Environment(user_classes=classes, host=args.host)
    current: dict[str, Any] = {"latencies": Counter(), "statuses": Counter(), "ok": 0}

    def on_request(response_time: float, response: Any = None, exception: Any = None,
                   context: dict[str, Any] | None = None, **_: Any) -> None:
        # an HTTP user's response, or the status a gRPC user's code stands for (GrpcInferenceUser)
        status = getattr(response, "status_code", 0) or (context or {}).get("status", 0)
        current["statuses"][status] += 1
        if exception is None and 200 <= status < 300:
            current["ok"] += 1
            current["latencies"][round(response_time)] += 1

    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    writer = locust_stats.StatsCSVFileWriter(env, list(locust_stats.PERCENTILES_TO_REPORT), args.csv, full_history=True)
    csv_greenlet = gevent.spawn(writer.stats_writer)
    runner.start(args.users, spawn_rate=args.users)
    gevent.sleep(args.warmup)
    windows: list[Window] = []
    steady = False
    while len(windows) < args.max_windows and not steady:
        current.update(latencies=Counter(), statuses=Counter(), ok=0)
        gevent.sleep(args.window)
        windows.append(Window(args.window, current["ok"], current["latencies"], current["statuses"]))
        steady = is_steady(windows)
    runner.quit()
    gevent.sleep(1.1)  # one more CSV flush
    csv_greenlet.kill()
    writer.close_files()
    result = {"users": args.users, **summarise(windows, steady)}
    args.json.write_text(json.dumps(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
