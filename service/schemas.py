"""Request and response bodies of the REST v1 API (they also make the OpenAPI at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticUseDefault

from service.inputs import integral

JsonInt = Annotated[StrictInt, BeforeValidator(integral)]


def _null_is_default(value: Any) -> Any:
    if value is None:
        raise PydanticUseDefault()
    return value


# null for a field with a default is the field left out, as it is for the nullable ones: a Go struct
# of pointer fields without ``omitempty`` sends null for each one it leaves unset. Per field, so it
# runs only where the field is given (a model validator made every parse build a Python dict).
NullIsDefault = BeforeValidator(_null_is_default)


class _OneOrMany(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr | None = Field(None, description="one text; or use 'texts'")
    texts: list[StrictStr] | None = Field(None, description="several texts, answered in the same order")

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneOrMany:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    def field_and_texts(self) -> tuple[str, list[str]]:
        """The field the texts came from (for error messages) and the texts as a list."""
        return ("text", [self.text]) if self.text is not None else ("texts", list(self.texts or []))

    def answer(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """One result for 'text', {"results": [...]} in order for 'texts'."""
        return results[0] if self.text is not None else {"results": results}


class SentimentRequest(_OneOrMany):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "A gorgeous, witty film."}]})


class SentimentResult(BaseModel):
    label: str
    score: float = Field(description="probability of the returned label")
    probabilities: dict[str, float]
    model: str
    version: str
    sentences: int | None = Field(None, description="only for a text over the model's subword limit: the "
                                  "sentences it was scored as, its probabilities their mean")


class SentimentBatchResponse(BaseModel):
    results: list[SentimentResult]


class TranslateRequest(_OneOrMany):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "A man is riding a bike.", "source": "en", "target": "de", "beam_size": 5}]})
    source: Annotated[StrictStr, NullIsDefault] = "en"
    target: Annotated[StrictStr, NullIsDefault] = "de"
    beam_size: JsonInt | None = Field(None, description="1 = greedy; default from the model card")
    max_length: JsonInt | None = Field(None, description="max target subwords; default 2 x source + 10")
    return_attention: Annotated[StrictBool, NullIsDefault] = False
    stream: Annotated[StrictBool, NullIsDefault] = Field(
        False, description="answer as Server-Sent Events (one 'text'; see the README)")
    num_hypotheses: JsonInt | None = Field(None, description="n-best: also return this many hypotheses "
                                             "(up to the beam size), best first")
    length_penalty: StrictFloat | None = Field(None, description="score = sum(log p) / length ** length_penalty "
                                         "(0-5; default from the model card)")
    sampling_topk: JsonInt | None = Field(None, description="sample from the k most likely subwords each step "
                                            "(1-20; beam 1)")
    sampling_temperature: StrictFloat | None = Field(None, description="sampling temperature (> 0, <= 100; default 1)")
    seed: JsonInt | None = Field(None, description="sampling seed, for a repeatable sample")



class NBestItem(BaseModel):
    translation: str
    score: float
    target_tokens: list[str]


class TranslationResult(BaseModel):
    translation: str
    source_tokens: list[str] = Field(description="source subwords as the model read them, ending with \"</s>\"")
    target_tokens: list[str]
    score: float = Field(description="length-normalised log-probability of the translation")
    attention: list[list[float]] | None = Field(
        None, description="one row per target token, one column per source token including the final \"</s>\": "
                          "each row is that step's attention distribution and sums to 1 (within 1e-5)")
    model: str
    version: str
    hypotheses: list[NBestItem] | None = Field(None, description="the n-best list, when num_hypotheses is given")
    seed: int | None = Field(None, description="the sampling seed used, when sampling")
    finish_reason: Literal["stop", "length"] = Field(
        description="\"stop\": the model ended the translation; \"length\": it reached max_length first (of a "
                    "sentence of the text), so it may be incomplete")


class TranslateBatchResponse(BaseModel):
    results: list[TranslationResult]


class ModelInfo(BaseModel):
    name: str
    version: str
    versions: list[str]
    task: str
    description: str = Field(description="the model card's: what the model does and what it was trained on")
    provider: str
    precision: str = Field(description="fp32, or int8 (derived from fp32, on the CPU)")
    labels: list[str] | None = None
    languages: dict[str, str] | None = None
    limits: dict[str, int | float]
    metrics: dict[str, float]


class ModelList(BaseModel):
    models: list[ModelInfo]


class ErrorDetail(BaseModel):
    field: str = Field(description="where in the body, as the answer's field names it (texts[3], inputs[0].shape)")
    message: str


class ErrorBody(BaseModel):
    error: str
    code: str
    field: str | None = None
    limit: object | None = Field(None, description="the limit the field broke: a number, a string (a media "
                                 "type), a [low, high] range or a list of accepted values")
    details: list[ErrorDetail] | None = Field(None, description="a body that does not parse as the schema, or "
                                              "texts that break a limit (empty, too long, over the subword "
                                              "limit): each problem (up to 20), the first as above")
