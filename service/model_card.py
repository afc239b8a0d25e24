"""model.json: the contract between an exported model and the service (../shared/DESIGN.md).

The pydantic classes are the schema: the service parses every model.json with them, and the
test suite validates the committed cards against ``ModelCard.model_json_schema()``.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"  # a model's name: also its folder's, and part of every v2 path
TensorType = Literal["int64", "int32", "float32", "float16", "bool"]


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: TensorType
    shape: list[int | str] = Field(description="ints are fixed sizes, strings name dynamic axes")


class GraphSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class TokenizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["sentencepiece"] = "sentencepiece"
    file: str
    normalizer: Literal["sentiment", "translation"]
    vocab_size: int = Field(gt=0)
    # optional: cards exported before it load unchanged (their tokenizer is then checked by its size)
    sha256: str | None = Field(None, description="of the sentencepiece file: one of another model is refused at load")
    truecaser: str | None = Field(None, description="word-casing table recasing ALL CAPS / lower / Title Case "
                                                    "input before subwords (service/truecasing.py)")


class DecodingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default_beam_size: int = Field(ge=1)
    max_beam_size: int = Field(ge=1)
    length_penalty: float
    max_length_ratio: float = Field(gt=0, description="default max_length = ratio * source tokens + extra")
    max_length_extra: int = Field(ge=0)
    top_k: int = Field(ge=2, description="candidates per row returned by the decoder step (>= 2 x max beam)")

    @model_validator(mode="after")
    def _beams_fit(self) -> DecodingSpec:
        if self.default_beam_size > self.max_beam_size:
            raise ValueError(f"default_beam_size {self.default_beam_size} is over max_beam_size {self.max_beam_size}")
        if self.top_k < 2 * self.max_beam_size:  # a beam keeps its best after dropping finished ones
            raise ValueError(f"top_k {self.top_k} is under 2 x max_beam_size ({2 * self.max_beam_size})")
        return self


class ParitySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tolerance: float = Field(gt=0)
    max_abs_diff: float = Field(ge=0, description="measured ONNX Runtime vs PyTorch on real mixed-length batches")
    checked_on: str


class RobustnessScore(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bleu_lc: float = Field(description="lowercased 13a BLEU against the normal (cased) references")
    bleu: float = Field(description="cased detokenised BLEU (13a) against the normal references")
    refused: int = Field(ge=0, description="sentences the API refuses (over max_input_tokens); scored as empty")


class RobustnessSpec(BaseModel):
    """Quality on the same held-out sentences typed differently (export/text_variants.py)."""

    model_config = ConfigDict(extra="forbid")
    beam_size: int = Field(ge=1)
    truecaser: bool = Field(description="whether the source truecaser was on")
    measured: str = Field(description="how the figures were produced")
    scores: dict[str, dict[str, RobustnessScore]] = Field(description="split -> variant -> scores")


class DerivedParity(BaseModel):
    """A derived precision against the fp32 graphs, on the same inputs: how often the top class or
    next token agrees, and how far the probabilities move (per row, the largest |p - p_fp32|)."""

    model_config = ConfigDict(extra="forbid")
    agreement: float = Field(ge=0, le=1)
    min_agreement: float = Field(ge=0, le=1)
    mean_abs_diff: float = Field(ge=0, description="per-row largest probability difference, averaged over rows")
    tolerance: float = Field(gt=0, description="limit on mean_abs_diff")
    max_abs_diff: float = Field(ge=0, description="the largest over all rows (reported, not limited)")
    checked_on: str


class PrecisionSpec(BaseModel):
    """A precision derived from the committed fp32 graphs by a repo command. Its graph files are
    git-ignored, beside the fp32 ones; they carry the sha256 of the graph they came from, and are
    checked by parity (the quantizer's bytes vary across ONNX Runtime versions, so not by hash)."""

    model_config = ConfigDict(extra="forbid")
    graphs: dict[str, str] = Field(description="graph key -> derived file")
    method: str
    command: str
    parity: DerivedParity
    metrics: dict[str, float] = Field(description="measured like the fp32 metrics, same keys")
    auto: bool = Field(True, description="SEQSERVE_PRECISION=auto serves it on the CPU; false where its answers "
                                         "would move with their batch-mates against what the API promises")


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=r"^[0-9]+$")
    task: Literal["text-classification", "translation"]
    description: str
    architecture: dict[str, int | float | str]
    graphs: dict[str, GraphSpec]
    tokenizers: dict[str, TokenizerSpec]
    special_tokens: dict[str, int]
    max_input_tokens: int = Field(gt=0)
    max_output_tokens: int | None = Field(None, gt=0)
    labels: list[str] | None = None
    languages: dict[str, str] | None = None
    decoding: DecodingSpec | None = None
    training_data: dict[str, str]
    training: dict[str, int | float | str]
    metrics: dict[str, float]
    robustness: RobustnessSpec | None = None
    opset: int = Field(ge=17)
    parity: ParitySpec
    # optional: cards written before INT8 existed load unchanged, and a fresh export drops the
    # entry (the figures described the old fp32 graphs) until `python -m export.quantize --write`
    precisions: dict[Literal["int8"], PrecisionSpec] | None = None

    @model_validator(mode="after")
    def _has_what_its_runner_reads(self) -> ModelCard:
        """Every key the task's runner reads (service/runners/), so a card missing one is refused
        at load with its name rather than failing later with a KeyError."""
        graphs, tokenizers = _TASK_KEYS[self.task]
        for kind, wanted, present in (("graphs", graphs, self.graphs), ("tokenizers", tokenizers, self.tokenizers)):
            missing = [key for key in wanted if key not in present]
            if missing:
                raise ValueError(f"a {self.task} card needs {kind} {', '.join(repr(k) for k in missing)}")
        for key in _TASK_FIELDS[self.task]:
            if not getattr(self, key):
                raise ValueError(f"a {self.task} card needs {key!r}")
        self._agrees_with_its_graphs()
        return self

    def _agrees_with_its_graphs(self) -> None:
        """What the card says about sizes the graphs fix: one label per class the classifier
        outputs, the decoder's candidates per row as many as ``decoding.top_k``, both languages."""
        if self.task == "text-classification":
            classes = self.graphs["model"].outputs[0].shape[-1]
            if isinstance(classes, int) and len(self.labels or []) != classes:
                raise ValueError(f"labels has {len(self.labels or [])} names for its graph's {classes} classes")
            return
        missing = [key for key in ("source", "target") if key not in (self.languages or {})]
        if missing:
            raise ValueError(f"languages needs {' and '.join(repr(k) for k in missing)}")
        top_ids = next((t for t in self.graphs["decoder_step"].outputs if t.name == "top_ids"), None)
        candidates = top_ids.shape[-1] if top_ids is not None else None
        if isinstance(candidates, int) and self.decoding is not None and candidates != self.decoding.top_k:
            raise ValueError(f"decoding.top_k is {self.decoding.top_k} but the decoder step returns {candidates} "
                             "candidates per row")


# what each task's runner reads from a card: graphs and tokenizers by key, then top-level fields
_TASK_KEYS = {"text-classification": (("model",), ("text",)),
              "translation": (("encoder", "decoder_step"), ("source", "target"))}
_TASK_FIELDS = {"text-classification": ("labels",),
                "translation": ("decoding", "max_output_tokens", "languages")}


class ModelCardError(ValueError):
    """A model.json that is missing, unreadable or does not follow the schema."""


def load_model_card(path: Path) -> ModelCard:
    try:
        return ModelCard.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise ModelCardError(f"{path}: model card not found") from exc
    except OSError as exc:  # a volume mounted with another owner: one line, not a traceback
        raise ModelCardError(f"{path}: cannot be read ({exc.strerror}; the server runs as uid {os.getuid()})") \
            from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelCardError(f"{path}: not valid JSON ({exc})") from exc
    except ValidationError as exc:
        # one line an operator can act on ("graphs.encoder: Field required"), not pydantic's
        # three lines and a link per error
        problems = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'the file'}: {error['msg']}{_nearest(error)}"
                             for error in exc.errors())
        raise ModelCardError(f"{path}: does not follow the model.json schema ({exc.error_count()} "
                             f"problem{'s' if exc.error_count() > 1 else ''}): {problems}") from exc


def _nearest(error: ErrorDetails) -> str:
    """For a key the schema does not know ("lables"), the nearest key it does."""
    if error["type"] != "extra_forbidden" or not error["loc"]:
        return ""
    key = str(error["loc"][-1])  # a known key at the wrong level is not told to be itself
    near = difflib.get_close_matches(key, [k for k in _CARD_KEYS if k != key], n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


_CARD_KEYS = sorted({key for cls in (ModelCard, GraphSpec, TensorSpec, TokenizerSpec, DecodingSpec, ParitySpec,
                                     RobustnessSpec, RobustnessScore, PrecisionSpec, DerivedParity)
                     for key in cls.model_fields})


def write_model_card(card: ModelCard, path: Path) -> None:
    path.write_text(json.dumps(card.model_dump(exclude_none=True), indent=2, ensure_ascii=False) + "\n")
