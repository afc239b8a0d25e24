"""Shared training plumbing: seeds, per-epoch log, checkpoints, length-bucketed batches, curves."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), in shuffled order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to [batch, max_len] int64 plus lengths [batch] int64."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    out = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
    return out, lengths


class EpochLog:
    """One JSON object per epoch in ``log.jsonl``; also echoed to stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print("epoch " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)

    def truncate(self, epochs: int) -> None:
        """Forget epochs after a resumed checkpoint so the log matches the model."""
        self.rows = [r for r in self.rows if int(r["epoch"]) <= epochs]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))


def plot_curves(rows: list[dict[str, Any]], metrics: list[str], title: str, out_file: Path) -> Path:
    """PNG of per-epoch curves: losses on the left axis group, quality metrics on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        for key in sorted({k for r in rows for k in r if k.startswith(metric)}):
            ax.plot(epochs, [r.get(key) for r in rows], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file


def resume(run: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, log: EpochLog,
           fresh: dict[str, Any]) -> dict[str, Any]:
    """Continue from ``run/last.pt`` when it exists (model, optimizer, loop state, log)."""
    last = run / "last.pt"
    if not last.exists():
        return fresh
    ckpt = torch.load(last, weights_only=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # torch's "size mismatch for ..." lines, as a traceback
        raise SystemExit(f"{last} holds a model of other sizes than these arguments ({_differences(run, model, exc)}): "
                         "resume with the arguments it was started with, or give a new --run-dir") from None
    optimizer.load_state_dict(ckpt["optimizer"])
    state: dict[str, Any] = ckpt["state"]
    log.truncate(state["epoch"])
    print(f"resumed from {last} after epoch {state['epoch']}", flush=True)
    return state


def run_facts(seed: int, examples: int) -> dict[str, int | str]:
    """What the model card says of a run beside its figures (export/onnx_export.py): the seed,
    the training examples used (after --limit), and the machine."""
    return {"seed": seed, "train_examples": examples, "hardware": f"{os.cpu_count()}-core CPU"}


def say_reused(files: list[Path]) -> None:
    """The run's subword models are kept across resumes: say so where one is reused, since its
    vocabulary and training texts were fixed when it was made."""
    print(f"reusing {', '.join(f.name for f in files)} from {files[0].parent} (the vocabulary size and --limit "
          "apply to a new --run-dir only)", flush=True)


def _differences(run: Path, model: torch.nn.Module, exc: RuntimeError) -> str:
    """What differs between the run's model (its best.pt's config) and this one, by option name;
    torch's first line where the run has no config to compare."""
    saved: dict[str, Any] = {}
    if (run / "best.pt").exists():
        saved = torch.load(run / "best.pt", weights_only=False).get("config", {})
    config = getattr(model, "config", None)
    current: dict[str, Any] = config.to_dict() if config is not None else {}
    differ = [f"--{key.replace('_', '-')} {saved[key]}, not {current[key]}" for key in sorted(saved)
              if key in current and saved[key] != current[key]]
    return "; ".join(differ) or str(exc).strip().splitlines()[0]


def save_last(run: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state}, run / "last.pt")


class Timer:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def minutes(self) -> float:
        return (time.monotonic() - self.start) / 60.0
