"""Triton's perf_analyzer against seqserve: both models, over HTTP and gRPC, at several concurrencies,
with real dev/val sentences as --input-data (its default random strings would decode garbage).

The binary: tritonclient 2.41.0's manylinux wheel carries one that runs on Debian bookworm with
Debian's libb64-0d and the nvidia-cuda-runtime-cu12 wheel's library (no GPU needed; PyPI's
``perf-analyzer`` is an empty placeholder). ``--install DIR`` puts both under DIR (bin/, lib/),
as ``make test`` does in .venv/perf_analyzer, which is then the default binary. A newer build
needs glibc >= 2.38: ``--root DIR`` runs ``chroot DIR BINARY`` in a newer Debian root and writes
the input and output files under DIR/tmp (see the README's Benchmarks section).

    python -m loadtests.perf_analyzer --install .venv/perf_analyzer   # the binary, from PyPI
    python -m loadtests.perf_analyzer                          # starts a server itself
    python -m loadtests.perf_analyzer --url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001
    python -m loadtests.perf_analyzer --root /var/tmp/trixie --binary /opt/pa/bin/perf_analyzer
    python -m loadtests.perf_analyzer --protocols grpc,grpc-stream  # ModelStreamInfer (--streaming)

Prints one row per (model, protocol, concurrency): throughput, latency percentiles and the
requests that failed (perf_analyzer stops with an error on the first failed request).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from loadtests.http_client import auth_headers
from loadtests.inputs import sentiment_texts, translation_texts
from loadtests.server import ROOT, ServerProcess

# the wheels that carry a perf_analyzer binary and the one library of CUDA's it loads
WHEELS = ("tritonclient==2.41.0", "nvidia-cuda-runtime-cu12==12.9.79")
_MEMBERS = {"tritonclient-2.41.0.data/data/bin/perf_analyzer": "bin/perf_analyzer",
            "nvidia/cuda_runtime/lib/libcudart.so.12": "lib/libcudart.so.12"}
BUNDLED = Path(sys.prefix) / "perf_analyzer"  # where `make test` installs it: in the virtualenv it runs in


def install(dest: Path) -> Path:
    """Download the wheels (x86-64 Linux) and put perf_analyzer and its CUDA runtime library under
    ``dest`` (whole or not at all: make tests for the binary); returns the binary. Debian's
    libb64-0d must be installed too."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux1_x86_64", "--platform", "manylinux2014_x86_64", "-d", tmp,
                        *WHEELS], check=True)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for member in set(archive.namelist()) & set(_MEMBERS):
                    target = partial / _MEMBERS[member]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, target.open("wb") as out:
                        shutil.copyfileobj(source, out)
                    target.chmod(0o755)
    if not (partial / "bin" / "perf_analyzer").exists() or not (partial / "lib" / "libcudart.so.12").exists():
        raise RuntimeError(f"the wheels {WHEELS} did not hold perf_analyzer and libcudart")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest / "bin" / "perf_analyzer"


def input_data(texts: list[str]) -> dict[str, object]:
    """perf_analyzer's --input-data: one request per text, shape [1] past the batch dimension."""
    return {"data": [{"text": {"content": [t], "shape": [1]}} for t in texts]}


def environment(binary: str) -> dict[str, str]:
    """The binary's environment: an installed one (``install``) finds its CUDA runtime library."""
    env = dict(os.environ)
    library = Path(binary).parent.parent / "lib"
    if library.is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(library), env.get("LD_LIBRARY_PATH")]))
    return env


def run_one(command: list[str], host_csv: Path, env: dict[str, str]) -> dict[str, str]:
    """One perf_analyzer run: the last row of the CSV it wrote (``host_csv``, read and removed), or
    {"error": its last line of output}."""
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    if proc.returncode != 0 or not host_csv.exists():
        return {"error": (proc.stdout + proc.stderr).strip().splitlines()[-1] if proc.stdout + proc.stderr else
                f"exit {proc.returncode}"}
    with host_csv.open() as f:
        rows = list(csv.DictReader(f))
    host_csv.unlink()
    return rows[-1] if rows else {"error": "no measurement"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="HTTP host:port of a running server (default: start one)")
    parser.add_argument("--grpc-url", help="gRPC host:port of that server")
    parser.add_argument("--binary", default=str(BUNDLED / "bin" / "perf_analyzer") if BUNDLED.exists()
                        else "perf_analyzer", help="perf_analyzer (inside --root when given; default the one "
                        "--install put in .venv/perf_analyzer, else the one on PATH)")
    parser.add_argument("--install", type=Path, metavar="DIR", help="put perf_analyzer under DIR and exit")
    parser.add_argument("--root", type=Path, help="run the binary with chroot in this root (glibc >= 2.38)")
    parser.add_argument("--models", default="sentiment,translate-en-de")
    parser.add_argument("--protocols", default="http,grpc",
                        help="of http, grpc and grpc-stream (gRPC's ModelStreamInfer: perf_analyzer --streaming)")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--texts", type=int, default=200, help="distinct sentences per model")
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer's measurement window")
    parser.add_argument("--max-trials", type=int, default=8, help="windows before a step counts as unstable")
    parser.add_argument("--stability", type=int, default=10,
                        help="percent by which 3 windows may differ (perf_analyzer's -s; raise it on a busy "
                             "shared machine)")
    args = parser.parse_args(argv)
    if args.url is not None and args.grpc_url is None and any(p.startswith("grpc") for p in args.protocols.split(",")):
        parser.error("--grpc-url is needed for the grpc protocols (or --protocols http)")
    if args.install:
        print(install(args.install))
        return 0

    server = None
    if args.url is None:
        server = ServerProcess.ready(ROOT / "models", capture_output=True)
        args.url, args.grpc_url = server.url.removeprefix("http://"), server.grpc_url
    inside = Path("/tmp") if args.root else Path(ROOT / "reports")
    host_dir = args.root / "tmp" if args.root else inside
    host_dir.mkdir(parents=True, exist_ok=True)
    prefix = ["chroot", str(args.root)] if args.root else []
    env = environment(args.binary) if not args.root else dict(os.environ)
    texts = {"sentiment": sentiment_texts(), "translate-en-de": translation_texts()}
    print("| model | protocol | concurrency | infer/s | p50 ms | p90 ms | p99 ms | server queue ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    failed = 0
    try:
        for model in args.models.split(","):
            data_name = f"perf_analyzer_{model}.json"
            (host_dir / data_name).write_text(json.dumps(input_data(texts[model][:args.texts])))
            for protocol in args.protocols.split(","):
                url = args.url if protocol == "http" else args.grpc_url
                streaming = ["--streaming"] if protocol == "grpc-stream" else []
                # the API key (SEQSERVE_CLIENT_API_KEY): perf_analyzer's -H reaches HTTP only
                key = [arg for name, value in auth_headers().items() for arg in ("-H", f"{name}:{value}")] \
                    if protocol == "http" else []
                if auth_headers() and protocol != "http":
                    print(f"  {protocol}: perf_analyzer sends no gRPC metadata, so not the API key: a keyed "
                          "server answers UNAUTHENTICATED", file=sys.stderr)
                for level in args.concurrency.split(","):
                    command = [*prefix, args.binary, "-m", model, "-u", url, "-i", protocol.removesuffix("-stream"),
                               *streaming, *key,
                               "--input-data", str(inside / data_name), "--concurrency-range", level,
                               "-p", str(args.interval_ms), "--max-trials", str(args.max_trials),
                               "-s", str(args.stability),
                               "-f", str(inside / "perf_analyzer.csv")]
                    row = run_one(command, host_dir / "perf_analyzer.csv", env)
                    if "error" in row:
                        failed += 1
                        print(f"| {model} | {protocol} | {level} | | | | | | {row['error']} |")
                        print("  command:", shlex.join(command), file=sys.stderr)
                        continue
                    ms = {k: float(row[k]) / 1000 for k in ("p50 latency", "p90 latency", "p99 latency",
                                                              "Server Queue")}
                    print(f"| {model} | {protocol} | {level} | {float(row['Inferences/Second']):.1f} "
                          f"| {ms['p50 latency']:.1f} | {ms['p90 latency']:.1f} | {ms['p99 latency']:.1f} "
                          f"| {ms['Server Queue']:.1f} | 0 |", flush=True)
    finally:
        if server is not None:
            server.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
