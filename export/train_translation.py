"""Train the English→German attention translator on Multi30k task 1.

    python -m export.train_translation --data-dir ../shared/data --run-dir runs/translate-en-de

Resumable: rerunning with the same --run-dir continues from the last finished epoch.
Early stopping and learning-rate halving follow greedy BLEU on the validation split.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import sacrebleu
import torch
from torch.nn import functional as F
from tqdm import tqdm

from export.cli import run
from export.data import DEFAULT_DATA_DIR, read_multi30k_pairs
from export.text_variants import VARIANTS, augment_choices
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
from export.translation_model import AttentionTranslator, TranslationConfig
from service.tokenization import BOS_ID, EOS_ID, PAD_ID, SubwordTokenizer

MAX_TRAIN_TOKENS = 100  # longer training pairs (a handful) are skipped


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--run-dir", type=Path, default=Path("runs/translate-en-de"))
    p.add_argument("--src-vocab", type=int, default=6000)
    p.add_argument("--tgt-vocab", type=int, default=6000)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--encoder-hidden", type=int, default=192)
    p.add_argument("--encoder-layers", type=int, default=2)
    p.add_argument("--decoder-hidden", type=int, default=384)
    p.add_argument("--attention-dim", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=3, help="epochs without val BLEU gain before stopping")
    p.add_argument("--max-minutes", type=float, default=75.0, help="stop after the epoch that crosses this")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training pairs (smoke tests)")
    p.add_argument("--val-limit", type=int, default=0, help="use only the first N validation pairs")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--case-augment", type=float, default=0.0,
                   help="share of training sources shown upper/lower/title-cased or without final punctuation "
                        "each epoch (export/text_variants.py); targets keep their casing")
    p.add_argument("--keep-epochs", type=int, default=0,
                   help="also keep the last N epochs' weights (epoch-N.pt) for checkpoint averaging at export")
    return p.parse_args(argv)


@torch.no_grad()
def greedy_translate(
    model: AttentionTranslator, src: list[list[int]], max_extra: int = 10, batch_size: int = 128
) -> list[list[int]]:
    """Batched greedy decoding in torch (for validation during training only)."""
    model.eval()
    outputs: list[list[int]] = [[] for _ in src]
    order = sorted(range(len(src)), key=lambda i: len(src[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, lengths = pad([src[i] for i in idx])
        states, keys, state = model.encode(ids, lengths)
        mask = (torch.arange(ids.size(1))[None] < lengths[:, None]).float()
        prev = torch.full((len(idx),), BOS_ID, dtype=torch.int64)
        done = torch.zeros(len(idx), dtype=torch.bool)
        limit = lengths * 2 + max_extra
        hyps: list[list[int]] = [[] for _ in idx]
        for t in range(int(limit.max())):
            log_probs, state, _ = model.step(prev, state, states, keys, mask)
            prev = log_probs.argmax(-1)
            for row in range(len(idx)):
                if not done[row]:
                    if prev[row].item() == EOS_ID or t >= limit[row]:
                        done[row] = True
                    else:
                        hyps[row].append(int(prev[row]))
            if bool(done.all()):
                break
        for row, i in enumerate(idx):
            outputs[i] = hyps[row]
    model.train()
    return outputs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    run = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    timer = Timer()

    train_pairs = read_multi30k_pairs(args.data_dir, "train")
    val_pairs = read_multi30k_pairs(args.data_dir, "val")
    if args.limit:
        train_pairs = train_pairs[: args.limit]
    if args.val_limit:
        val_pairs = val_pairs[: args.val_limit]

    src_model, tgt_model = run / "source.spm.model", run / "target.spm.model"
    if not (src_model.exists() and tgt_model.exists()):
        print(f"training subword models on {len(train_pairs)} training pairs", flush=True)
        train_subword_model([s for s, _ in train_pairs], src_model, args.src_vocab, "translation")
        train_subword_model([t for _, t in train_pairs], tgt_model, args.tgt_vocab, "translation")
    else:
        say_reused([src_model, tgt_model])
    src_tok = SubwordTokenizer(src_model, "translation")
    tgt_tok = SubwordTokenizer(tgt_model, "translation")

    data = [(src_tok.encode(s, add_eos=True), tgt_tok.encode(t)) for s, t in train_pairs]
    kept = [i for i, (s, t) in enumerate(data) if len(s) <= MAX_TRAIN_TOKENS and len(t) < MAX_TRAIN_TOKENS]
    data = [data[i] for i in kept]
    # each variant's source ids, encoded once; an augmented epoch picks one per pair
    variant_src: dict[str, list[list[int]]] = {"given": [s for s, _ in data]}
    if args.case_augment:
        for name, transform in VARIANTS.items():
            if name != "given":
                encoded = [src_tok.encode(transform(train_pairs[i][0]), add_eos=True) for i in kept]
                variant_src[name] = [ids[:MAX_TRAIN_TOKENS - 1] + ids[-1:] if len(ids) > MAX_TRAIN_TOKENS else ids
                                     for ids in encoded]
    val_src = [src_tok.encode(s, add_eos=True) for s, _ in val_pairs]
    val_refs = [t for _, t in val_pairs]

    config = TranslationConfig(
        src_vocab=src_tok.vocab_size, tgt_vocab=tgt_tok.vocab_size, embed_dim=args.embed_dim,
        encoder_hidden=args.encoder_hidden, encoder_layers=args.encoder_layers,
        decoder_hidden=args.decoder_hidden, attention_dim=args.attention_dim, dropout=args.dropout,
    )
    model = AttentionTranslator(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    log = EpochLog(run / "log.jsonl")
    state = resume(run, model, optimizer, log, {"epoch": 0, "best_bleu": -1.0, "bad_epochs": 0})
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f}M parameters; {len(data)} training pairs; {len(val_src)} val", flush=True)

    rng = random.Random(args.seed + state["epoch"])
    while state["epoch"] < args.epochs and state["bad_epochs"] < args.patience:
        epoch = state["epoch"] + 1
        batches = bucketed_batches([len(t) for _, t in data], args.batch_size, rng)
        shown = augment_choices(len(data), args.case_augment, rng) if args.case_augment else ["given"] * len(data)
        sources = [variant_src[shown[i]][i] for i in range(len(data))]
        model.train()
        total_loss, total_tokens = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", mininterval=5, ncols=100)
        for batch in bar:
            src, src_len = pad([sources[i] for i in batch])
            tgt_in, _ = pad([[BOS_ID, *data[i][1]] for i in batch])
            tgt_out, _ = pad([[*data[i][1], EOS_ID] for i in batch])
            logits = model(src, src_len, tgt_in)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1),
                                   ignore_index=PAD_ID, label_smoothing=args.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            tokens = int((tgt_out != PAD_ID).sum())
            total_loss += float(loss.detach()) * tokens
            total_tokens += tokens
            bar.set_postfix(loss=f"{total_loss / total_tokens:.3f}", refresh=False)
        bar.close()

        hyps = [tgt_tok.decode(h) for h in greedy_translate(model, val_src)]
        bleu = sacrebleu.corpus_bleu(hyps, [val_refs]).score
        bleu_lc = sacrebleu.corpus_bleu(hyps, [val_refs], lowercase=True).score
        lr = optimizer.param_groups[0]["lr"]
        improved = bleu_lc > state["best_bleu"]
        if improved:
            state["best_bleu"], state["bad_epochs"] = bleu_lc, 0
            torch.save({"config": config.to_dict(), "model": model.state_dict(), "epoch": epoch}, run / "best.pt")
        else:
            state["bad_epochs"] += 1
            for group in optimizer.param_groups:  # halve the step size on a plateau
                group["lr"] = lr * 0.5
        state["epoch"] = epoch
        save_last(run, model, optimizer, state)
        if args.keep_epochs:
            torch.save({"config": config.to_dict(), "model": model.state_dict(), "epoch": epoch},
                       run / f"epoch-{epoch}.pt")
            stale = run / f"epoch-{epoch - args.keep_epochs}.pt"
            stale.unlink(missing_ok=True)
        log.append({"epoch": epoch, "train_loss": total_loss / total_tokens, "val_bleu": bleu,
                    "val_bleu_lc": bleu_lc, "lr": lr, "minutes": timer.minutes(), "best": improved,
                    **run_facts(args.seed, len(data))})
        print(f"  sample: {val_pairs[0][0]!r} -> {hyps[0]!r}", flush=True)
        if timer.minutes() > args.max_minutes:
            print(f"time budget of {args.max_minutes} min reached; stopping", flush=True)
            break
    plot_curves(log.rows, ["train_loss", "val_bleu"], "translate-en-de (Multi30k en→de)", run / "training_curves.png")
    print(f"best val BLEU (lowercased, greedy) {state['best_bleu']:.2f}; checkpoint {run / 'best.pt'}", flush=True)


if __name__ == "__main__":
    run(main)
