"""Load-test inputs: dev/val sentences when the data directory is there, else generated ones.

The generator draws lengths from a distribution close to the real splits (SST-2 dev: median
~19 words, long tail to ~50; Multi30k val: median ~12 words) so that batching and padding
behave as they would on real traffic.
"""

from __future__ import annotations

import gzip
import os
import random
import sys
from pathlib import Path

DATA_DIR = Path(os.environ.get("SEQSERVE_DATA_DIR", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))

_WORDS = ("the a film movie story cast plot scene director actor funny dull moving smart charming "
          "slow great bad boring fresh witty man woman dog child street water red blue small young "
          "is are was plays runs walks sits looks holds and with in on of to at while near").split()


def _generate(count: int, median_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = max(2, min(int(rng.lognormvariate(0, 0.5) * median_words), 4 * median_words))
        words = [rng.choice(_WORDS) for _ in range(n)]
        out.append(" ".join(words).capitalize() + ".")
    return out


def _generated(path: Path) -> None:
    """Said on stderr: a report of generated word lists read as if of real sentences otherwise."""
    print(f"loadtests: no {path}: sending generated sentences, not the data set's (give --data-dir or "
          "SEQSERVE_DATA_DIR)", file=sys.stderr, flush=True)


def sentiment_texts(data_dir: Path = DATA_DIR, split: str = "dev") -> list[str]:
    path = data_dir / "sst2" / f"stsa.binary.{split}"
    if path.exists():
        return [line.partition(" ")[2].strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    _generated(path)
    return _generate(872, 19, seed=1)


def translation_texts(data_dir: Path = DATA_DIR, split: str = "val") -> list[str]:
    path = data_dir / "multi30k" / f"{split}.en.gz"
    if path.exists():
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    _generated(path)
    return _generate(1014, 12, seed=2)
