"""Train the SST-2 sentiment LSTM.

    python -m export.train_sentiment --data-dir ../shared/data --run-dir runs/sentiment

Training data: the GLUE SST-2 phrase-level set (67k phrases from the training trees, no dev or
test sentences) plus the 6.9k full training sentences. Early stopping on SST-2 dev accuracy.
Resumable: rerunning with the same --run-dir continues from the last finished epoch.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from export.cli import run
from export.data import DEFAULT_DATA_DIR, LabelledText, read_sst2, read_sst2_phrases
from export.sentiment_model import SentimentConfig, SentimentLSTM
from export.tokenizers import train_subword_model
from export.training import (
    EpochLog,
    Timer,
    bucketed_batches,
    pad,
    plot_curves,
    resume,
    run_facts,
    save_last,
    say_reused,
    set_seed,
)
from service.tokenization import SubwordTokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--run-dir", type=Path, default=Path("runs/sentiment"))
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--patience", type=int, default=3, help="epochs without dev gain before stopping")
    p.add_argument("--max-minutes", type=float, default=50.0)
    p.add_argument("--no-phrases", action="store_true", help="train on full sentences only")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training examples (smoke tests)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


@torch.no_grad()
def accuracy(model: SentimentLSTM, data: list[tuple[list[int], int]], batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        ids, lengths = pad([ids for ids, _ in chunk])
        pred = model.logits(ids, lengths).argmax(-1)
        correct += int((pred == torch.tensor([label for _, label in chunk])).sum())
    model.train()
    return correct / max(len(data), 1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    run = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    timer = Timer()

    train: list[LabelledText] = read_sst2(args.data_dir, "train")
    if not args.no_phrases:
        train = train + read_sst2_phrases(args.data_dir)
    if args.limit:
        train = train[: args.limit]
    dev = read_sst2(args.data_dir, "dev")

    spm_file = run / "sentiment.spm.model"
    if not spm_file.exists():
        print(f"training the subword model on {len(train)} training texts", flush=True)
        # Sentences and phrases overlap heavily; the sentences alone cover the vocabulary.
        texts = [r.text for r in read_sst2(args.data_dir, "train")][: args.limit or None]
        train_subword_model(texts, spm_file, args.vocab, "sentiment")
    else:
        say_reused([spm_file])
    tok = SubwordTokenizer(spm_file, "sentiment")
    data = [(tok.encode(r.text), r.label) for r in train]
    data = [(ids, label) for ids, label in data if ids]
    dev_data = [(tok.encode(r.text), r.label) for r in dev]

    config = SentimentConfig(vocab=tok.vocab_size, embed_dim=args.embed_dim, hidden=args.hidden,
                             layers=args.layers, dropout=args.dropout)
    model = SentimentLSTM(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    log = EpochLog(run / "log.jsonl")
    state = resume(run, model, optimizer, log, {"epoch": 0, "best_acc": -1.0, "bad_epochs": 0})
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f}M parameters; {len(data)} training texts; {len(dev_data)} dev", flush=True)

    rng = random.Random(args.seed + state["epoch"])
    while state["epoch"] < args.epochs and state["bad_epochs"] < args.patience:
        epoch = state["epoch"] + 1
        model.train()
        total_loss, seen, correct = 0.0, 0, 0
        batches = bucketed_batches([len(ids) for ids, _ in data], args.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", mininterval=5, ncols=100)
        for batch in bar:
            ids, lengths = pad([data[i][0] for i in batch])
            labels = torch.tensor([data[i][1] for i in batch])
            logits = model.logits(ids, lengths)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(-1) == labels).sum())
            seen += len(batch)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", refresh=False)
        bar.close()
        dev_acc = accuracy(model, dev_data)
        improved = dev_acc > state["best_acc"]
        if improved:
            state["best_acc"], state["bad_epochs"] = dev_acc, 0
            torch.save({"config": config.to_dict(), "model": model.state_dict(), "epoch": epoch}, run / "best.pt")
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        save_last(run, model, optimizer, state)
        log.append({"epoch": epoch, "train_loss": total_loss / seen, "train_acc": correct / seen,
                    "dev_acc": dev_acc, "minutes": timer.minutes(), "best": improved,
                    **run_facts(args.seed, len(data))})
        if timer.minutes() > args.max_minutes:
            print(f"time budget of {args.max_minutes} min reached; stopping", flush=True)
            break
    plot_curves(log.rows, ["train_loss", "dev_acc"], "sentiment (SST-2)", run / "training_curves.png")
    print(f"best dev accuracy {state['best_acc']:.4f}; checkpoint {run / 'best.pt'}", flush=True)


if __name__ == "__main__":
    run(main)
