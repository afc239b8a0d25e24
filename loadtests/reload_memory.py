"""Resident memory across model reloads: does a server that rolls versions give memory back?

    python -m loadtests.reload_memory [--cycles 20] [--model sentiment]

Starts a server with model control on a temporary copy of the model (versions 1 and 2, the
latest served), then repeats a version roll: version 2's folder moved away and the model loaded
(version 1 takes over, 2 is unloaded), moved back and loaded again (2 takes over). Prints the
server's RSS after each cycle (after a second's pause: what an unload gives back comes a second
later, service/repository.py) and the growth per cycle over the second half, after the warm-up.
A soak before service/memory.py saw ~5.6 MB a cycle, for good.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.server import ROOT, ServerProcess


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def two_versions(model: str, into: Path) -> Path:
    """A repository holding ``model`` as versions 1 and 2 (the same files)."""
    shutil.copytree(ROOT / "models" / model / "1", into / model / "1")
    shutil.copytree(into / model / "1", into / model / "2")
    card = into / model / "2" / "model.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "version": "2"}, indent=2))
    return into


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--model", default="sentiment")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="seqserve-reload-") as folder:
        repo = two_versions(args.model, Path(folder) / "repo")
        aside = Path(folder) / "aside"
        server = ServerProcess.ready(repo, model_control="true", warmup="false", grpc_port="0")
        try:
            load = f"{server.url}/v2/repository/models/{args.model}/load"
            sizes = [rss_mib(server.proc.pid)]
            print(f"start: {sizes[0]:.0f} MiB", flush=True)
            for cycle in range(1, args.cycles + 1):
                for move in ((repo / args.model / "2", aside), (aside, repo / args.model / "2")):
                    shutil.move(*move)
                    httpx.post(load, timeout=120).raise_for_status()
                time.sleep(1.2)
                sizes.append(rss_mib(server.proc.pid))
                print(f"cycle {cycle}: {sizes[-1]:.0f} MiB", flush=True)
        finally:
            server.stop()
    half = sizes[len(sizes) // 2:]
    per_cycle = (half[-1] - half[0]) / max(len(half) - 1, 1)
    print(f"{args.cycles} cycles: {sizes[0]:.0f} -> {sizes[-1]:.0f} MiB; second half {per_cycle:+.2f} MiB per cycle")


if __name__ == "__main__":
    main()
