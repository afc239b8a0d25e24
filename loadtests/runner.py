"""Headless load-test runner: concurrency sweep (closed loop, Locust) and arrival-rate steps
(open loop), optionally A/B against a second server configuration, against the raw limit.

    python -m loadtests                          # = make loadtest: sentiment, batching on vs off
    python -m loadtests --host http://127.0.0.1:8000 --classes SentimentUser,TranslationUser
    python -m loadtests --ab-name request-batching --ab-env SEQSERVE_TRANSLATION_SCHEDULER=request \\
                        --classes TranslationUser --users 1,16,64 --rates 5,10

Writes to --out: Locust's CSV per step, results.json, summary.md and latency_vs_throughput.png.
Every step is bounded (windows x window seconds), servers bind 127.0.0.1, and the run stops
by itself. See README, "Load tests", for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtests.bench_service import RawSentiment
from loadtests.http_client import API_KEY_VARIABLE, auth_headers, encode_post, open_loop
from loadtests.inputs import DATA_DIR, sentiment_texts, translation_texts
from loadtests.load_generator import run_clients
from loadtests.server import ROOT, ServerProcess, served_models
from loadtests.steady import summarise


def scrape(url: str) -> dict[str, float]:
    """Sums and counts of the server's batching histograms, per model."""
    out: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", headers=auth_headers(), timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name in ("seqserve_batch_size", "seqserve_queue_wait_seconds", "seqserve_padding_ratio"):
            for sample in family.samples:
                if sample.name.endswith(("_sum", "_count")):
                    key = f"{sample.name}/{sample.labels.get('model')}"  # every version of the model
                    out[key] = out.get(key, 0.0) + sample.value
    return out


def server_view(before: dict[str, float], after: dict[str, float], model: str = "sentiment") -> dict[str, float]:
    def mean(metric: str) -> float:
        count = after.get(f"{metric}_count/{model}", 0) - before.get(f"{metric}_count/{model}", 0)
        total = after.get(f"{metric}_sum/{model}", 0) - before.get(f"{metric}_sum/{model}", 0)
        return total / count if count else float("nan")

    return {"mean_batch_size": mean("seqserve_batch_size"),
            "mean_queue_wait_ms": mean("seqserve_queue_wait_seconds") * 1000,
            "mean_padding_ratio": mean("seqserve_padding_ratio")}


# the Locust scenario whose requests are the lean client's (single-text sentiment): only then do the
# two clients' figures measure the same traffic
LEAN_SCENARIO = "SentimentSingleUser"


def _requests(classes: str) -> tuple[list[bytes], str]:
    """Pre-encoded requests for the lean client (the open loop, the cross-check), matching the
    Locust scenario's main request, and what they are."""
    if "Translation" in classes and "Sentiment" not in classes:
        return [encode_post("/v1/translate", {"text": t, "beam_size": 1}) for t in translation_texts()], \
            "greedy translations of one text"
    return [encode_post("/v1/sentiment", {"text": t}) for t in sentiment_texts()], "single-text sentiment"


def _number(value: float, spec: str) -> str:
    """A server-side mean, or "-" where the server reported none (the translator has no batch metrics)."""
    return "-" if math.isnan(value) else format(value, spec)


def address_of(url: str) -> tuple[str, int]:
    """The host and port the lean clients (the open loop, the cross-check) connect to for ``--host``:
    they took 127.0.0.1 and the text after the last colon, whatever the URL said (another host was
    measured as this machine; "http://localhost" failed with a ValueError). Plain HTTP only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--host {url}: give an http:// URL with a host name (the lean clients speak plain HTTP)")
    return parts.hostname, parts.port or 80


def run_config(name: str, url: str, args: argparse.Namespace, out: Path,
               grpc_port: int | None = None) -> dict[str, Any]:
    """One configuration's steps against the server at ``url`` (its gRPC port, where the runner started
    it, for GrpcInferenceUser; otherwise SEQSERVE_GRPC_PORT as set, or 8001)."""
    host, port = address_of(url)
    step_env = {**os.environ, "SEQSERVE_GRPC_PORT": str(grpc_port)} if grpc_port else None
    # the precision the server chose for sentiment (INT8 on a CPU where derived): the raw limit's
    precision = served_models(url).get("sentiment", {}).get("precision")
    result: dict[str, Any] = {"name": name, "closed": [], "open": [], "sentiment_precision": precision}
    for users in args.users:
        before = scrape(url)
        prefix = out / f"{name}_u{users}"
        subprocess.run([sys.executable, "-m", "loadtests.locust_step", "--host", url, "--users", str(users),
                        "--classes", args.classes, "--window", str(args.window), "--max-windows",
                        str(args.max_windows), "--csv", str(prefix), "--json", f"{prefix}.json"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=step_env)
        step = json.loads(Path(f"{prefix}.json").read_text())
        step.update(server_view(before, scrape(url)))
        result["closed"].append(step)
        print(f"  [{name}] {users:>3} users: {step['rps']:8.1f} req/s  p50 {step['p50_ms']:.0f} ms  "
              f"p99 {step['p99_ms']:.0f} ms  batch {_number(step['mean_batch_size'], '.1f')}  "
              f"steady={step['steady']}", flush=True)
    requests, _ = _requests(args.classes)
    for rate in args.rates:
        before = scrape(url)
        windows, steady = asyncio.run(open_loop(host, port, lambda i: (requests[i % len(requests)], 1), rate,
                                                args.window, args.max_windows))
        step = {"rate": rate, **summarise(windows, steady), **server_view(before, scrape(url))}
        result["open"].append(step)
        print(f"  [{name}] {rate:>5} req/s offered: {step['rps']:8.1f} answered  p50 {step['p50_ms']:.0f} ms  "
              f"p99 {step['p99_ms']:.0f} ms  steady={step['steady']}", flush=True)
    if name == "A" and args.classes == LEAN_SCENARIO:
        result["cross_check"] = []
        for users in args.cross_check:
            lean, _ = run_clients(port, requests, users, args.window * 3, host=host)
            locust_step = next((s for s in result["closed"] if s["users"] == users), None)
            result["cross_check"].append({"users": users, "lean_client_rps": lean.rps,
                                          "locust_rps": locust_step["rps"] if locust_step else None,
                                          "lean_p50_ms": lean.percentile(50) * 1000})
            print(f"  [{name}] cross-check at {users} users: lean client {lean.rps:.1f} req/s", flush=True)
    return result


def plot(results: list[dict[str, Any]], out_file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"p50_ms": "-", "p95_ms": "--", "p99_ms": ":"}
    for ax, kind, label in ((axes[0], "closed", "users"), (axes[1], "open", "rate")):
        for i, res in enumerate(results):
            steps = res[kind]
            if not steps:
                continue
            color = f"C{i}"
            for metric, style in styles.items():
                ax.plot([s["rps"] for s in steps], [s[metric] for s in steps], style, marker="o", color=color,
                        label=f"{res['name']} {metric[:-3]}")
            for s in steps:
                ax.annotate(str(s[label]), (s["rps"], s["p50_ms"]), textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color=color)
        ax.set_xlabel("answered requests/s")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.set_title("closed loop (labels: users)" if kind == "closed" else "open loop (labels: offered req/s)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)


def _status_text(statuses: dict[str, int]) -> str:
    bad = {k: v for k, v in statuses.items() if k != "200"}
    return ", ".join(f"{k}: {v}" for k, v in bad.items()) or "0"


def summary(results: list[dict[str, Any]], raw: dict[str, Any] | None, args: argparse.Namespace) -> str:
    lines = ["# seqserve load test", "",
             f"scenario: Locust users `{args.classes}`, closed loop at {args.users} users; open loop (the lean "
             f"client) at {args.rates} req/s offered, sending {_requests(args.classes)[1]}; windows of "
             f"{args.window:g} s, steady = three windows within 10 % (at most {args.max_windows} windows). "
             "Mean batch, queue wait and padding are the sentiment model's (the translator decodes step by "
             "step and reports no batches: -).", ""]
    for res in results:
        lines += [f"## {res['name']}: {res.get('config', '')}", "",
                  "| loop | load | req/s | p50 | p90 | p95 | p99 ms | non-2xx (status: count) | steady | "
                  "mean batch | queue wait ms | padding |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
        for kind, key in (("closed", "users"), ("open", "rate")):
            for s in res[kind]:
                lines.append(f"| {kind} | {s[key]} | {s['rps']:.1f} | {s['p50_ms']:.0f} | {s['p90_ms']:.0f} | "
                             f"{s['p95_ms']:.0f} | {s['p99_ms']:.0f} | {_status_text(s['statuses'])} | "
                             f"{'yes' if s['steady'] else 'no'} | {_number(s['mean_batch_size'], '.1f')} | "
                             f"{_number(s['mean_queue_wait_ms'], '.1f')} | {_number(s['mean_padding_ratio'], '.2f')} |")
        lines.append("")
    if len(results) == 2:
        a, b = results
        lines += [f"## A/B: {a['name']} vs {b['name']} (ratio A / B)", "", "| users | req/s | p50 | p99 |",
                  "|---:|---:|---:|---:|"]
        for sa, sb in zip(a["closed"], b["closed"], strict=True):
            ratios = [sa[k] / max(sb[k], 1e-9) for k in ("rps", "p50_ms", "p99_ms")]
            lines.append(f"| {sa['users']} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
        lines.append("")
    if raw is not None:
        best_served = max(s["rps"] for s in results[0]["closed"])
        lines += ["## Served vs the raw limit", "",
                  f"raw ONNX Runtime in {raw['precision']}, as A served it (no HTTP, length-sorted batches of the "
                  f"same sentences): {raw['best']:,.0f} sentences/s at batch {raw['best_size']}; best served (A, one "
                  f"sentence a request): {best_served:,.0f} req/s = **{best_served / raw['best']:.2f}** of the raw "
                  "limit", ""]
    elif args.classes != LEAN_SCENARIO:
        lines += ["## Served vs the raw limit", "", f"Not run: the raw limit counts sentences of single-text "
                  f"sentiment, the traffic of `{LEAN_SCENARIO}` alone; `{args.classes}` sends other requests.", ""]
    checks = [c for c in results[0].get("cross_check", []) if c["locust_rps"]]
    if args.classes != LEAN_SCENARIO and args.cross_check:
        lines += ["## Cross-check", "", f"Not run: the lean client sends single-text sentiment, the traffic of "
                  f"`{LEAN_SCENARIO}` alone; `{args.classes}` sends other requests, so the two figures would "
                  "not measure the same thing.", ""]
    if checks:
        lines += ["## Cross-check", "",
                  "The same server measured by the independent lean asyncio client (`loadtests/http_client.py`) at "
                  "the same concurrency. Below saturation the two must agree within 15 %. Near saturation on a "
                  "machine where the load generator shares the server's cores, each client's own CPU per request "
                  "(Locust's is several times the lean client's) takes throughput from the server, so Locust's "
                  "saturated figures understate the server; `make bench` (lean client) is the capacity reference.",
                  "", "| users | Locust req/s | lean client req/s | ratio |", "|---:|---:|---:|---:|"]
        for c in checks:
            ratio = c["locust_rps"] / c["lean_client_rps"]
            lines.append(f"| {c['users']} | {c['locust_rps']:.1f} | {c['lean_client_rps']:.1f} | **{ratio:.2f}** "
                         f"({'within' if abs(ratio - 1) <= 0.15 else 'outside'} 15 %) |")
        lines.append("")
    lines += ["![latency vs throughput](latency_vs_throughput.png)", ""]
    return "\n".join(lines)


def ab_settings(pairs: list[str]) -> dict[str, str]:
    """``--ab-env``'s SEQSERVE_NAME=value pairs as ServerProcess settings: the name in lower case,
    the value as given (a path, a key or an origin has a case: lowered, config B served another
    model repository)."""
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        settings[key.removeprefix("SEQSERVE_").lower()] = value
    return settings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", help="target an already running server instead of starting one (no A/B then)")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--classes", default="SentimentSingleUser", help="Locust user classes, comma-separated")
    p.add_argument("--users", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",") if x], default=[100.0, 300.0])
    p.add_argument("--window", type=float, default=3.0, help="seconds per measurement window")
    p.add_argument("--max-windows", type=int, default=6)
    p.add_argument("--ab-name", default="batching-off")
    p.add_argument("--ab-env", nargs="*", default=["SEQSERVE_MAX_BATCH_SIZE=1"],
                   help="settings of configuration B (empty: no A/B)")
    p.add_argument("--cross-check", type=lambda s: [int(x) for x in s.split(",") if x], default=[4, 16],
                   help="user counts for the lean-client cross-check, below and near saturation ('': off)")
    p.add_argument("--no-raw", action="store_true", help="skip the raw ONNX Runtime limit")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "loadtest")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    configs: list[tuple[str, dict[str, str]]] = [("A", {})]
    if args.ab_env and not args.host:
        configs.append(("B", ab_settings(args.ab_env)))
    results = []
    for name, env in configs:
        label = "defaults" if not env else ", ".join(f"SEQSERVE_{k.upper()}={v}" for k, v in env.items())
        if name == "B":
            label += f" ({args.ab_name})"
        print(f"config {name}: {label}", flush=True)
        if args.host:
            address_of(args.host)
            try:  # a server that is not there: said, not a traceback
                httpx.get(f"{args.host.rstrip('/')}/v2/health/ready", timeout=5)
                # a keyed server would answer every measured request 401: said before measuring
                keyed = httpx.post(f"{args.host.rstrip('/')}/v1/sentiment", json={"text": "A fine film."},
                                   headers=auth_headers(), timeout=30).status_code == 401
            except httpx.HTTPError as exc:
                raise SystemExit(f"--host {args.host}: no server answers there ({exc})") from exc
            if keyed:
                raise SystemExit(f"--host {args.host}: the server wants an API key and "
                                 f"{API_KEY_VARIABLE} {'holds another' if auth_headers() else 'is not set'}: "
                                 f"set it to one of the server's SEQSERVE_API_KEYS")
            res = run_config(name, args.host.rstrip("/"), args, args.out)
        else:
            server = ServerProcess.ready(args.models, settings=env)
            try:
                res = run_config(name, server.url, args, args.out, server.grpc_port)
            finally:
                server.stop()
        res["config"] = label
        results.append(res)

    raw = None
    if not args.no_raw and args.classes == LEAN_SCENARIO and not args.host:
        from service.onnx_session import Precision
        from service.runners import SentimentRunner, load_runner

        precision: Precision = "int8" if results[0]["sentiment_precision"] == "int8" else "fp32"
        runner = load_runner(args.models / "sentiment" / "1", ["CPUExecutionProvider"], precision=precision)
        assert isinstance(runner, SentimentRunner)
        limit = RawSentiment(runner, sentiment_texts(args.data_dir), [1, 8, 32, 64, 128])
        for _ in range(3):
            limit.sweep()
        raw = {**limit.report(), "precision": precision}
    (args.out / "results.json").write_text(json.dumps({"results": results, "raw": raw}, indent=1, default=str))
    plot(results, args.out / "latency_vs_throughput.png")
    (args.out / "summary.md").write_text(summary(results, raw, args))
    print(summary(results, raw, args))
    print(f"written to {args.out} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
