"""Readers for the training corpora under a data directory (default ../shared/data).

Layout expected (public sources are listed in docs/models.md, *Data*):
  sst2/stsa.binary.{train,dev,test}   "<label> <tokenized sentence>" per line
  sst2/glue-train.tsv                 GLUE SST-2 phrase-level training set (tab-separated, header names the columns)
  multi30k/{train,val,test_2016_flickr}.{en,de}.gz   Multi30k task 1, raw text, one sentence a line
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

SST_SPLITS = ("train", "dev", "test")
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int


class DataNotFound(FileNotFoundError):
    """A data file that --data-dir does not hold: the message says what to pass."""


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataNotFound(
            f"{path} not found: pass --data-dir pointing at a folder with sst2/ and multi30k/ "
            "(see docs/models.md, Data)"
        )
    return path


def read_sst2(data_dir: Path, split: str) -> list[LabelledText]:
    """SST-2 sentence split: each line is a 0/1 label, a space, then the tokenised sentence."""
    if split not in SST_SPLITS:
        raise ValueError(f"unknown SST-2 split {split!r}; expected one of {SST_SPLITS}")
    rows = []
    for line in _require(data_dir / "sst2" / f"stsa.binary.{split}").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        rows.append(LabelledText(text=text.strip(), label=int(label)))
    return rows


def read_sst2_phrases(data_dir: Path) -> list[LabelledText]:
    """GLUE SST-2 train.tsv: 67k labelled phrases from the training trees (no dev/test sentences)."""
    lines = _require(data_dir / "sst2" / "glue-train.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    text_col, label_col = header.index("sentence"), header.index("label")
    rows = []
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) == len(header) and fields[text_col].strip():
            rows.append(LabelledText(text=fields[text_col].strip(), label=int(fields[label_col])))
    return rows


def read_multi30k(data_dir: Path, split: str, lang: str) -> list[str]:
    if split not in MULTI30K_SPLITS:
        raise ValueError(f"unknown Multi30k split {split!r}; expected one of {MULTI30K_SPLITS}")
    path = _require(data_dir / "multi30k" / f"{split}.{lang}.gz")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def read_multi30k_pairs(data_dir: Path, split: str, src: str = "en", tgt: str = "de") -> list[tuple[str, str]]:
    sources = read_multi30k(data_dir, split, src)
    targets = read_multi30k(data_dir, split, tgt)
    if len(sources) != len(targets):
        raise ValueError(f"Multi30k {split}: {len(sources)} {src} lines but {len(targets)} {tgt} lines")
    return list(zip(sources, targets, strict=True))
