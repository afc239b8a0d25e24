"""The CUDA path, checked and measured in one bounded run (issue 17).

    python -m loadtests.gpu_check [--budget-s 420] [--out reports/gpu_check] [--duration 5] [--dry-run]

1. placement: both models through the service's runners on CUDA (TF32 off, as served): the CUDA
   provider is active and every LSTM/GRU node ran on it (ONNX Runtime's profiler names the
   provider of each node it ran), and what ran on the CPU is listed;
2. parity: CPU against GPU outputs within the model card's tolerance (sentiment probabilities,
   encoder outputs, teacher-forced decoder log-probabilities), and identical translations
   (token ids, greedy and beam 5);
3. serving: the serving benchmark's phases (loadtests/bench_service.py's pieces and the lean load
   generator) on servers with the CUDA provider: sentiment at 1/64/256 clients, translation greedy
   and beam 5 at 1/64/256 clients iteration-level and at 64/256 whole-request, p50/p99 by source
   length, served == solo decoding; then the same on the host's CPU with the same SEQSERVE_WORKERS /
   SEQSERVE_INSTANCES (taken from the environment, like every other server setting).

The phases run in order of what the issue's targets need first. Results go to OUT/gpu_check.json
(and a markdown summary beside it) after every phase, and no phase starts that the remaining
budget cannot cover, so a short lease still returns what it measured. ``--dry-run`` runs every
phase with the CPU provider in place of CUDA and tiny durations (the CI test). Exit status 0
when every check that ran passed, 1 otherwise; the speed targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from loadtests.bench_service import check_identical, http_sentiment, http_translate, length_buckets
from loadtests.http_client import LoadResult
from loadtests.inputs import DATA_DIR, sentiment_texts, translation_texts
from loadtests.load_generator import LoadGenerator, default_processes
from loadtests.server import ROOT, ServerProcess, metric_value
from service.model_card import load_model_card
from service.onnx_session import CPU, CUDA, ModelLoadError, Provider, choose_providers, cuda_options, node_providers
from service.runners.sentiment import SentimentRunner
from service.runners.translation import TranslationRunner
from service.settings import Settings
from service.tokenization import BOS_ID

RNN_OPS = ("LSTM", "GRU")
CLIENTS = (1, 64, 256)
WHOLE_CLIENTS = (64, 256)


@dataclass
class Plan:
    """What one run does and how big (a dry run shrinks every part)."""

    duration: float = 5.0  # measured seconds per load phase
    warmup: float = 1.0  # unmeasured seconds before each
    sentiment_parity: int = 512  # sentences compared CPU vs GPU
    translation_parity: tuple[int, int] = (200, 100)  # sentences translated greedy, beam 5
    placement_sentences: int = 8  # translated greedy and beam 5 while the profiler runs
    solo_checked: int = 150  # served answers per beam compared with solo decoding
    server_start_s: float = 30.0  # what the budget reserves for a server's start


@dataclass
class Report:
    out: Path
    data: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(_strict(self.data), indent=1) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def _strict(value: Any) -> Any:
    """Plain JSON: numpy numbers as floats, NaN (a percentile of no answers) as null."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else float(value)
    return value


class Budget:
    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)


# --- 1. placement ---------------------------------------------------------------------------
def _runners(models: Path, providers: list[Provider], device_path: bool) -> tuple[SentimentRunner, TranslationRunner]:
    """The service's runners; ``device_path``: profiled, with the translator's rows on the device
    (CUDA does that anyway; a dry run does it on the CPU provider)."""
    s_dir, t_dir = models / "sentiment" / "1", models / "translate-en-de" / "1"
    sentiment = SentimentRunner(s_dir, load_model_card(s_dir / "model.json"), providers, profile=device_path)
    translator = TranslationRunner(t_dir, load_model_card(t_dir / "model.json"), providers,
                                   io_binding=True if device_path else None, profile=device_path)
    return sentiment, translator


def placement(sentiment: SentimentRunner, translator: TranslationRunner, expect: str, texts: list[str],
              sources: list[str], plan: Plan) -> dict[str, Any]:
    """Run typical work through profiled runners, then read which provider ran each node."""
    sentiment.run([sentiment.tokenize(t) for t in texts[:64]])
    translator.warmup()  # every row-operations case too
    translator.translate([translator.job(translator.tokenize(s), beam) for s in sources[: plan.placement_sentences]
                          for beam in (1, 5)])
    out: dict[str, Any] = {}
    for name, runner in (("sentiment", sentiment), ("translate-en-de", translator)):
        nodes: dict[str, dict[str, dict[str, int]]] = {}
        rnn_total = rnn_elsewhere = 0
        for graph, session in runner.sessions().items():
            for (provider, op), n in node_providers(session).items():
                nodes.setdefault(graph, {}).setdefault(provider, {})[op] = n
                if op in RNN_OPS:
                    rnn_total += n
                    rnn_elsewhere += n if provider != expect else 0
        active = runner.providers[0]
        out[name] = {"provider": active, "rnn_nodes": rnn_total, "rnn_nodes_not_on_" + expect: rnn_elsewhere,
                     "nodes": nodes, "ok": active == expect and rnn_total > 0 and rnn_elsewhere == 0}
    return out


# --- 2. parity ------------------------------------------------------------------------------
def parity(cpu: tuple[SentimentRunner, TranslationRunner], gpu: tuple[SentimentRunner, TranslationRunner],
           texts: list[str], sources: list[str], plan: Plan) -> dict[str, Any]:
    (cpu_s, cpu_t), (gpu_s, gpu_t) = cpu, gpu
    ids = [cpu_s.tokenize(t) for t in texts[: plan.sentiment_parity]]
    probs = max(float(np.abs(cpu_s.run(ids[i : i + 64]) - gpu_s.run(ids[i : i + 64])).max())
                for i in range(0, len(ids), 64))
    s_tol = cpu_s.card.parity.tolerance
    src = [cpu_t.tokenize(s) for s in sources[:32]]
    enc_c, enc_g = cpu_t.encode(src), gpu_t.encode(src)
    to_host = TranslationRunner.to_host
    encoder = max(float(np.abs(to_host(a) - to_host(b)).max()) for a, b in
                  ((enc_c.states, enc_g.states), (enc_c.keys, enc_g.keys), (enc_c.init_state, enc_g.init_state)))
    decoder = _teacher_forced(cpu_t, gpu_t, src)
    t_tol = cpu_t.card.parity.tolerance
    mismatches: dict[str, list[int]] = {}
    for beam, count in zip((1, 5), plan.translation_parity, strict=True):
        jobs = [cpu_t.job(cpu_t.tokenize(s), beam) for s in sources[:count]]
        on_cpu = [o.tokens for i in range(0, len(jobs), 32) for o in cpu_t.translate(jobs[i:i + 32])]
        on_gpu = [o.tokens for i in range(0, len(jobs), 32) for o in gpu_t.translate(jobs[i:i + 32])]
        mismatches[f"beam {beam}"] = [len(jobs), sum(a != b for a, b in zip(on_cpu, on_gpu, strict=True))]
    return {"sentiment_probabilities_max_abs_diff": probs, "sentiment_tolerance": s_tol,
            "encoder_max_abs_diff": encoder, "decoder_log_probs_max_abs_diff": decoder, "translation_tolerance": t_tol,
            "translations_checked_differing": mismatches,
            "ok": probs <= s_tol and encoder <= t_tol and decoder <= t_tol
            and all(d == 0 for _, d in mismatches.values())}


def _teacher_forced(cpu: TranslationRunner, gpu: TranslationRunner, src: list[list[int]], steps: int = 8) -> float:
    """Largest log-prob difference over ``steps`` decoder steps fed the CPU's best tokens, each side
    carrying its own state (so drift accumulates as it would in decoding)."""
    width = max(len(s) for s in src)
    runners = (cpu, gpu)
    host: list[list[np.ndarray]] = []  # each side's states, keys, mask, decoder state, on the host
    for runner in runners:
        rows, state = runner.gather_rows(None, None, None, runner.encode(src), width)
        host.append([runner.to_host(v) for v in (rows.states, rows.keys, rows.mask, state)])
    prev = np.full(len(src), BOS_ID, dtype=np.int64)
    parents = np.arange(len(src), dtype=np.int64)
    worst = 0.0
    for _ in range(steps):
        outs = []
        for runner, values in zip(runners, host, strict=True):
            states, keys, mask, state = values
            feeds = dict(zip(runner._dec_in, (prev, state, parents, states, keys, mask), strict=True))
            log_probs, values[3] = runner.decoder.run([runner._dec_out[0], runner._dec_out[3]], feeds)
            outs.append(log_probs)
        worst = max(worst, float(np.abs(outs[0] - outs[1]).max()))
        prev = outs[0].argmax(axis=1).astype(np.int64)
    return worst


# --- 3. serving -----------------------------------------------------------------------------
@dataclass
class Phase:
    side: str  # "gpu" or "cpu"
    route: str  # "sentiment" or "translate"
    clients: int
    beam: int = 0
    scheduler: str = "iteration"

    @property
    def name(self) -> str:
        what = "sentiment" if self.route == "sentiment" else f"translate beam {self.beam} {self.scheduler}"
        return f"{self.side} {what} {self.clients} clients"


def phases() -> list[Phase]:
    """Every serving phase, the ones the issue's targets compare first."""
    first = [Phase("gpu", "translate", 1, 1), Phase("gpu", "translate", 64, 1),
             Phase("gpu", "translate", 64, 1, "request"), Phase("gpu", "sentiment", 256),
             Phase("cpu", "translate", 64, 1), Phase("cpu", "sentiment", 256)]
    every = [p for side in ("gpu", "cpu") for p in
             [*(Phase(side, "sentiment", c) for c in CLIENTS),
              *(Phase(side, "translate", c, b) for b in (1, 5) for c in CLIENTS),
              *(Phase(side, "translate", c, b, "request") for b in (1, 5) for c in WHOLE_CLIENTS)]]
    return first + [p for p in every if p not in first]


class Servers:
    """One server per (provider setting, scheduler), started when a phase first needs it (in a dry
    run both sides share theirs)."""

    def __init__(self, models: Path, providers: dict[str, str]) -> None:
        self.models, self.providers = models, providers
        self.running: dict[tuple[str, str], ServerProcess] = {}
        self.started_s: dict[str, float] = {}

    def started(self, side: str, scheduler: str) -> bool:
        return (self.providers[side], scheduler) in self.running

    def get(self, side: str, scheduler: str) -> ServerProcess:
        key = (self.providers[side], scheduler)
        if key not in self.running:
            # fp32 on both sides: the CPU side's INT8 default would compare another model
            server = ServerProcess(self.models, providers=key[0], translation_scheduler=scheduler, precision="fp32")
            self.running[key] = server.wait_ready(timeout=300)
            self.started_s[" ".join(key)] = server.ready_after_s
        return self.running[key]

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()


_PROBES = {"sentiment": ("/v1/sentiment", {"text": "fine"}), "translate": ("/v1/translate", {"text": "A dog."})}


def settle(server: ServerProcess, route: str, timeout: float = 60.0) -> float:
    """Wait until the work a phase's clients left behind has drained (their answers were no longer
    awaited): one probe request answered, then no queued requests. Returns the seconds waited."""
    started = time.monotonic()
    path, body = _PROBES[route]
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(server.url + path, json=body, timeout=timeout)
    while time.monotonic() - started < timeout:
        depth = sum(metric_value(server.url, "seqserve_queue_depth", model=m) for m in ("sentiment", "translate-en-de"))
        if depth == 0:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def _figures(result: LoadResult, items: bool) -> dict[str, Any]:
    return {"rps": result.rps, "items_per_s": result.items_per_s if items else None,
            "p50_ms": result.percentile(50) * 1000, "p99_ms": result.percentile(99) * 1000,
            "non_2xx": sum(n for s, n in result.statuses.items() if s >= 300 or s == 0)}


def targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's speed targets from what was measured (absent where a phase did not run)."""
    def get(name: str) -> dict[str, Any] | None:
        return results.get(name)

    out: dict[str, Any] = {}
    one, many = get("gpu translate beam 1 iteration 1 clients"), get("gpu translate beam 1 iteration 64 clients")
    whole = get("gpu translate beam 1 request 64 clients")
    if one and many:
        out["gpu greedy 64/1 clients (>= 20x)"] = _target(many["rps"] / max(one["rps"], 1e-9), 20)
    if many and whole:
        ratio = many["rps"] / max(whole["rps"], 1e-9)
        out["gpu greedy iteration/whole-request at 64 (>= 1.3x, p99 no worse)"] = {
            "value": ratio, "p99_ms": [many["p99_ms"], whole["p99_ms"]],
            "met": ratio >= 1.3 and many["p99_ms"] <= whole["p99_ms"]}
    for route, name in (("sentiment 256 clients", "sentiment at 256"), ("translate beam 1 iteration 64 clients",
                                                                       "translation greedy at 64")):
        gpu, cpu = get(f"gpu {route}"), get(f"cpu {route}")
        if gpu and cpu:
            out[f"gpu/cpu requests/s, {name} (> 1x)"] = {"value": gpu["rps"] / max(cpu["rps"], 1e-9),
                                                        "rps": [gpu["rps"], cpu["rps"]], "met": gpu["rps"] > cpu["rps"]}
    return out


def _target(value: float, at_least: float) -> dict[str, Any]:
    return {"value": value, "met": value >= at_least}


def serving(args: argparse.Namespace, plan: Plan, budget: Budget, report: Report, say: Callable[[str], None],
            solo: dict[str, TranslationRunner], gpu_ok: bool) -> None:
    texts = sentiment_texts(args.data_dir, "test")
    sources = translation_texts(args.data_dir, "test_2016_flickr")
    random.Random(0).shuffle(sources)
    source_ids = [solo["cpu"].tokenize(s) for s in sources]
    servers = Servers(args.models, {"gpu": "cpu" if args.dry_run else "cuda", "cpu": "cpu"})
    recorded: dict[tuple[str, int], dict[int, bytes]] = {}
    results: dict[str, dict[str, Any]] = report.data.setdefault("phases", {})
    skipped: list[str] = report.data.setdefault("skipped", [])
    generator = LoadGenerator(args.client_processes, warmup_s=plan.warmup)
    try:
        for phase in phases():
            if phase.side == "gpu" and not gpu_ok:
                skipped.append(f"{phase.name} (the CUDA checks failed)")
                continue
            starting = not servers.started(phase.side, phase.scheduler)
            estimate = plan.warmup + plan.duration + 3 + (plan.server_start_s if starting else 0)
            if budget.left() < estimate:
                skipped.append(f"{phase.name} (budget: {budget.left():.0f} s left, needs ~{estimate:.0f} s)")
                report.save()
                continue
            server = servers.get(phase.side, phase.scheduler)
            if phase.route == "sentiment":
                result = http_sentiment(server.port, texts, phase.clients, plan.duration, generator)
                figures = _figures(result, items=True)
            else:
                record = recorded.setdefault((phase.side, phase.beam), {}) if phase.scheduler == "iteration" else None
                result = http_translate(server.port, sources, phase.clients, plan.duration, phase.beam, record,
                                        generator)
                figures = {**_figures(result, items=False),
                           "p50_ms_by_source_length": length_buckets(source_ids, result, 50),
                           "p99_ms_by_source_length": length_buckets(source_ids, result, 99)}
            figures["settle_s"] = settle(server, phase.route)
            results[phase.name] = figures
            report.data["server_start_s"] = servers.started_s
            report.data["targets"] = targets(results)
            report.data["elapsed_s"] = budget.seconds - budget.left()
            say(f"{phase.name}: {figures['rps']:.1f} requests/s, p50 {figures['p50_ms']:.1f} ms, "
                f"p99 {figures['p99_ms']:.1f} ms, non-2xx {figures['non_2xx']}")
            report.save()
        # served (iteration-level) translations against solo decoding on the same side's runner
        checks = report.data["checks"].setdefault("served_equals_solo", {})
        for (side, beam), bodies in recorded.items():
            keys = sorted(bodies)[: plan.solo_checked]
            if budget.left() < 5 + 0.1 * len(keys):
                skipped.append(f"{side} beam {beam} served == solo (budget)")
                continue
            checked, differ = check_identical(solo[side], sources, {k: bodies[k] for k in keys}, beam)
            checks[f"{side} beam {beam}"] = {"checked": checked, "differ": differ, "ok": differ == 0}
            say(f"{side} beam {beam}: served == solo decoding for {checked - differ}/{checked}")
            report.save()
    finally:
        generator.close()
        servers.stop()


# --- the run --------------------------------------------------------------------------------
def environment(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    settings = Settings()
    gpu = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    return {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(), "gpu": gpu,
            "cpus": os.cpu_count(), "workers": settings.workers, "instances": settings.instances or "auto",
            "cuda_options": cuda_options(settings).provider_options(), "dry_run": args.dry_run,
            "duration_s": plan.duration, "client_processes": args.client_processes,
            "server_settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SEQSERVE_")}}


def run(args: argparse.Namespace) -> bool:
    plan = Plan(duration=args.duration)
    if args.dry_run:
        plan = Plan(duration=min(args.duration, 0.4), warmup=0.2, sentiment_parity=32, translation_parity=(4, 2),
                    placement_sentences=2, solo_checked=4, server_start_s=10)
    budget = Budget(args.budget_s)
    report = Report(args.out, {"budget_s": args.budget_s, "environment": environment(args, plan), "checks": {}})

    def say(text: str) -> None:
        print(f"[{budget.seconds - budget.left():6.1f} s] {text}", flush=True)

    report.save()
    texts = sentiment_texts(args.data_dir, "test")
    sources = translation_texts(args.data_dir, "val")  # parity on val sentences; the benchmark on test ones
    expect = CPU if args.dry_run else CUDA
    # the GPU side as served: the CUDA provider with SEQSERVE_CUDA_* options (TF32 off unless set)
    checks = report.data["checks"]
    try:
        gpu_providers: list[Provider] = [CPU] if args.dry_run else choose_providers("cuda", cuda_options(Settings()))
        gpu = _runners(args.models, gpu_providers, device_path=True)
    except ModelLoadError as exc:  # no CUDA provider in this onnxruntime: nothing here can be measured
        checks["placement"] = {"error": str(exc)}
        report.data["ok"] = False
        report.save()
        say(f"FAILED: {exc}")
        return False
    checks["placement"] = placement(*gpu, expect, texts, sources, plan)
    for name, found in checks["placement"].items():
        say(f"placement {name}: {found['provider']}, {found['rnn_nodes']} LSTM/GRU nodes, ok={found['ok']}")
    report.save()
    cpu = _runners(args.models, [CPU], device_path=False)
    gpu_ok = all(found["ok"] for found in checks["placement"].values())
    if gpu_ok:
        checks["parity"] = parity(cpu, gpu, texts, sources, plan)
        say(f"parity: {json.dumps({k: v for k, v in checks['parity'].items()}, default=float)}")
        report.save()
    serving(args, plan, budget, report, say, {"gpu": gpu[1], "cpu": cpu[1]}, gpu_ok)
    report.data["elapsed_s"] = budget.seconds - budget.left()
    ok = gpu_ok and all(c["ok"] for c in [checks.get("parity", {"ok": False}),
                                          *checks.get("served_equals_solo", {}).values()])
    report.data["ok"] = ok
    report.save()
    say(f"{'PASSED' if ok else 'FAILED'}; written to {args.out}/gpu_check.json and .md")
    return ok


def markdown(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    lines = ["# seqserve GPU check", "",
             f"onnxruntime {env.get('onnxruntime')} ({', '.join(env.get('available_providers', []))}); GPU "
             f"{env.get('gpu')}; {env.get('cpus')} CPUs; WORKERS={env.get('workers')} "
             f"INSTANCES={env.get('instances')}; "
             f"CUDA options {env.get('cuda_options')}; {env.get('duration_s')} s per phase"
             + ("; **dry run (CPU provider in place of CUDA)**" if env.get("dry_run") else ""), ""]
    checks = data.get("checks", {})
    lines += ["## Checks", ""]
    if "error" in checks.get("placement", {}):
        lines.append(f"- **failed before any run**: {checks['placement']['error']}")
    for name, found in checks.get("placement", {}).items():
        if name == "error":
            continue
        cpu_nodes = {g: n.get(CPU, {}) for g, n in found["nodes"].items()}
        lines.append(f"- placement {name}: provider {found['provider']}, {found['rnn_nodes']} LSTM/GRU nodes, "
                     f"**ok={found['ok']}**; on the CPU: {cpu_nodes}")
    if "parity" in checks:
        p = checks["parity"]
        lines.append(f"- parity: sentiment {p['sentiment_probabilities_max_abs_diff']:.2e}, encoder "
                     f"{p['encoder_max_abs_diff']:.2e}, decoder {p['decoder_log_probs_max_abs_diff']:.2e} "
                     f"(tolerance {p['translation_tolerance']:g}); translations [checked, differing] "
                     f"{p['translations_checked_differing']}; **ok={p['ok']}**")
    for name, found in checks.get("served_equals_solo", {}).items():
        lines.append(f"- served == solo, {name}: {found['checked'] - found['differ']}/{found['checked']}")
    lines += ["", "## Targets", ""]
    lines += [f"- {name}: {t['value']:.2f} **{'met' if t['met'] else 'not met'}**"
              for name, t in data.get("targets", {}).items()]
    lines += ["", "## Phases", "", "| phase | requests/s | items/s | p50 ms | p99 ms | non-2xx "
              "| p50 / p99 ms by source length |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, f in data.get("phases", {}).items():
        by_length = ""
        if "p50_ms_by_source_length" in f:
            by_length = ", ".join(f"{k}: {v:.0f}/{f['p99_ms_by_source_length'][k]:.0f}"
                                  for k, v in f["p50_ms_by_source_length"].items())
        items = f"{f['items_per_s']:.0f}" if f.get("items_per_s") is not None else ""
        lines.append(f"| {name} | {f['rps']:.1f} | {items} | {_ms(f['p50_ms'])} | {_ms(f['p99_ms'])} | "
                     f"{f['non_2xx']} | {by_length} |")
    if data.get("skipped"):
        lines += ["", "Not run: " + "; ".join(data["skipped"])]
    lines += ["", f"elapsed {data.get('elapsed_s', 0):.0f} s of a {data.get('budget_s')} s budget; "
              f"overall **{'PASSED' if data.get('ok') else 'FAILED or unfinished'}**"]
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "gpu_check")
    p.add_argument("--budget-s", type=float, default=420.0, help="no phase starts that this would not cover")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per load phase")
    p.add_argument("--client-processes", type=int, default=default_processes())
    p.add_argument("--dry-run", action="store_true", help="the CPU provider in place of CUDA, tiny durations")
    args = p.parse_args(argv)
    return 0 if run(args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
