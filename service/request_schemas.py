"""What the server enforces on request bodies, as JSON Schema, for the OpenAPI document.

The pydantic models (service/schemas.py, the v2 routes) give the fields and their types; the
limits live in the settings (characters per text, texts per request) and in the served models'
cards (beam size, output length, top-k, languages), and some rules join fields: exactly one of
``text`` / ``texts``, sampling draws one hypothesis, an n-best list holds at most the beam size,
a seed needs sampling, a stream carries one text. Here they are stated where the handlers apply
them (service/inputs.py, service/inference.py), so that clients generated from the document, and
schema-driven fuzzers (tests/test_api_fuzz.py), see the rules the server applies.

What JSON Schema cannot state is left to the 422 that names it: a text's subword count (it depends
on the tokenizer) and, on v2, that a tensor's data holds as many elements as its shape says.
"""

from __future__ import annotations

from typing import Any

from service.inference import MAX_SEED
from service.inputs import MAX_TIMEOUT_US
from service.registry import ModelRegistry, ServedModel
from service.settings import Settings
from service.tokenization import NOTHING_LEFT
from service.v2_model import TEXT_INPUT, outputs_of

JsonSchema = dict[str, Any]
_NULL: JsonSchema = {"type": "null"}
# a property that must not be given: {"not": {}} rather than JSON Schema's equivalent ``false``,
# which openapi-python-client (the common Python generator) cannot parse
_NEVER: JsonSchema = {"not": {}}


def _escaped(characters: str) -> str:
    """A regular-expression class's characters with every one outside printable ASCII as \\uXXXX,
    which Python and ECMA-262 both read: raw control characters in the document (DEL, C1) made
    YAML loaders and openapi-spec-validator's command refuse it."""
    return "".join(c if " " <= c <= "~" else f"\\u{ord(c):04x}" for c in characters)


# a character that leaves a subword behind (service/tokenization.py): spelled out, since regex
# engines disagree on \s (Python's counts \x1c-\x1f and \x85, ECMA-262's counts \ufeff instead)
_HAS_CONTENT = f"[^{_escaped(NOTHING_LEFT)}]"


def optional(schema: JsonSchema) -> JsonSchema:
    return {"anyOf": [schema, _NULL]}


def text(settings: Settings) -> JsonSchema:
    """One text: something besides whitespace, control and invisible characters, at most the
    character limit."""
    return {"type": "string", "pattern": _HAS_CONTENT, "maxLength": settings.max_text_chars}


def texts(settings: Settings) -> JsonSchema:
    return {"type": "array", "items": text(settings), "minItems": 1, "maxItems": settings.max_texts_per_request}


def _given(field: str, json_type: str) -> JsonSchema:
    """``field`` is present and not null."""
    return {"required": [field], "properties": {field: {"type": json_type}}}


def one_or_many(settings: Settings) -> tuple[dict[str, JsonSchema], JsonSchema]:
    """The ``text`` / ``texts`` properties and the rule that exactly one of them is given."""
    properties = {"text": optional({**text(settings), "description": "one text; or use 'texts'"}),
                  "texts": optional({**texts(settings), "description": "several texts, answered in order"})}
    return properties, {"oneOf": [_given("text", "string"), _given("texts", "array")]}


# sampling asked for: a top-k or a temperature given (not null)
_SAMPLING: JsonSchema = {"anyOf": [_given("sampling_topk", "integer"), _given("sampling_temperature", "number")]}
_TIMEOUT: JsonSchema = optional({"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT_US,
                                 "description": "microseconds, as Triton's; shortens the server's deadline "
                                                "(0: no timeout of the request's own)"})


def _int(low: int, high: int, description: str) -> JsonSchema:
    return optional({"type": "integer", "minimum": low, "maximum": high, "description": description})


class TranslationLimits:
    """The decoding limits of the served translators (the loosest, should they differ)."""

    def __init__(self, registry: ModelRegistry | None) -> None:
        cards = [m.card for m in (registry.all() if registry is not None else []) if m.card.task == "translation"]
        decodings = [c.decoding for c in cards if c.decoding is not None]
        self.max_beam = max((d.max_beam_size for d in decodings), default=10)
        self.default_beam = max((d.default_beam_size for d in decodings), default=5)
        self.top_k = max((d.top_k for d in decodings), default=20)
        self.max_output = max((c.max_output_tokens or 1 for c in cards), default=200)
        self.sources = sorted({c.languages["source"] for c in cards if c.languages})
        self.targets = sorted({c.languages["target"] for c in cards if c.languages})

    def options(self) -> dict[str, JsonSchema]:
        """The decoding options, each with its own range (service/inference.py's checks)."""
        return {
            "beam_size": _int(1, self.max_beam, "1 = greedy; default from the model card"),
            "max_length": _int(1, self.max_output, "max target subwords; default 2 x source + 10"),
            "num_hypotheses": _int(1, self.max_beam, "n-best: also return this many hypotheses (up to the beam "
                                                     "size), best first"),
            "length_penalty": optional({"type": "number", "minimum": 0, "maximum": 5,
                                        "description": "score = sum(log p) / length ** length_penalty"}),
            "sampling_topk": _int(1, self.top_k, "sample from the k most likely subwords each step (beam 1)"),
            "sampling_temperature": optional({"type": "number", "exclusiveMinimum": 0, "maximum": 100,
                                              "description": "sampling temperature (default 1)"}),
            "seed": _int(0, MAX_SEED, "sampling seed, for a repeatable sample"),
        }

    def rules(self) -> list[JsonSchema]:
        """Sampling draws one hypothesis (beam 1, at most one in the n-best list) and a seed needs
        sampling; otherwise the n-best list holds at most the beam size asked for (or the default)."""
        one = {"properties": {"beam_size": {"enum": [None, 1]}, "num_hypotheses": {"enum": [None, 1]}}}
        rules: list[JsonSchema] = [{"if": _SAMPLING, "then": one, "else": {"properties": {"seed": _NULL}}}]
        for beam in range(1, self.max_beam + 1):
            rules.append({"if": {"required": ["beam_size"], "properties": {"beam_size": {"const": beam}}},
                          "then": {"properties": {"num_hypotheses": optional({"maximum": beam})}}})
        rules.append({"if": {"not": _given("beam_size", "integer")},
                      "then": {"properties": {"num_hypotheses": optional({"maximum": self.default_beam})}}})
        return rules


def v1_sentiment(settings: Settings) -> JsonSchema:
    properties, exactly_one = one_or_many(settings)
    # the rule under allOf, as v1_translate has it: a oneOf beside properties made openapi-python-client
    # skip the operation
    return {"type": "object", "properties": properties, "additionalProperties": False, "allOf": [exactly_one],
            "examples": [{"text": "A gorgeous, witty film."}]}


def v1_translate(settings: Settings, limits: TranslationLimits) -> JsonSchema:
    properties, exactly_one = one_or_many(settings)
    properties |= {
        # null is the default, as for the options
        "source": {**optional({"type": "string", "enum": limits.sources or ["en"]}), "default": "en"},
        "target": {**optional({"type": "string", "enum": limits.targets or ["de"]}), "default": "de"},
        "return_attention": {**optional({"type": "boolean"}), "default": False},
        "stream": {**optional({"type": "boolean"}), "default": False,
                   "description": "answer as Server-Sent Events (one 'text'; see the README)"},
        **limits.options(),
    }
    stream_one = {"if": {"required": ["stream"], "properties": {"stream": {"const": True}}},
                  "then": _given("text", "string")}
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "allOf": [exactly_one, stream_one, *limits.rules()],
            "examples": [{"text": "A man is riding a bike.", "source": "en", "target": "de", "beam_size": 5}]}


def _generate_rules(params: JsonSchema) -> list[JsonSchema]:
    """On one object of generate parameters: max_length or max_tokens, not both; sampling draws one
    hypothesis (beam 1), and a seed needs sampling."""
    return [{"if": {"required": ["max_length"]}, "then": {"properties": {"max_tokens": _NEVER}}},
            {"if": _SAMPLING, "then": {"properties": {"beam_size": {"enum": [None, 1]}}},
             "else": {"properties": {"seed": _NULL}}}]


def generate(settings: Settings, limits: TranslationLimits) -> JsonSchema:
    """Triton's generate extension: the parameters at the top level or in ``parameters`` (one or the
    other), the same decoding limits as v1 (no n-best list), ``max_tokens`` as another name for
    ``max_length``, a timeout in microseconds."""
    params = {k: v for k, v in limits.options().items() if k != "num_hypotheses"}
    params |= {"max_tokens": params["max_length"], "stream": {"type": "boolean"}, "timeout": _TIMEOUT}
    nested = {"type": "object", "properties": params, "additionalProperties": False, "allOf": _generate_rules(params)}
    one_place = {"if": _given("parameters", "object"),
                 "then": {"propertyNames": {"enum": ["text_input", "parameters"]}}}
    return {"type": "object", "required": ["text_input"], "additionalProperties": False,
            "properties": {"text_input": {**text(settings), "description": "the text to translate"},
                           "parameters": optional(nested), **params},
            "allOf": [one_place, *_generate_rules(params)],
            "examples": [{"text_input": "A man is riding a bike.", "parameters": {"beam_size": 1}}]}


GENERATE_PATHS = tuple(f"/v2/models/{{name}}{version}/{route}" for version in ("", "/versions/{version}")
                       for route in ("generate", "generate_stream"))


INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def infer(model: ServedModel, settings: Settings, limits: TranslationLimits) -> JsonSchema:
    """One model's v2 inference request in its JSON form: its one input (BYTES "text") of shape [N]
    or [N, 1] (N texts, flat or in lists, which the server flattens), the model's own outputs, and
    the parameters it reads (others are ignored, as the protocol allows). That ``data`` holds N
    texts is checked by the server alone."""
    rows = {"type": "integer", "minimum": 1, "maximum": settings.max_texts_per_request}
    shape = {"oneOf": [{"type": "array", "prefixItems": [rows], "minItems": 1, "maxItems": 1},
                       {"type": "array", "prefixItems": [rows, {"const": 1}], "minItems": 2, "maxItems": 2}]}
    one_text = text(settings)
    data = {"type": "array", "minItems": 1, "maxItems": settings.max_texts_per_request,
            # [N, 1]: each row one text
            "items": {"anyOf": [one_text, {"type": "array", "items": one_text, "minItems": 1, "maxItems": 1}]}}
    tensor = {"type": "object", "required": ["name", "datatype", "shape", "data"],
              "properties": {"name": {"const": TEXT_INPUT.name}, "datatype": {"const": TEXT_INPUT.datatype},
                             "shape": shape, "data": data,
                             # the JSON form carries no binary data to size
                             "parameters": optional({"type": "object", "properties": {"binary_data_size": _NEVER}})}}
    names = [o.name for o in outputs_of(model)]
    output = {"type": "object", "required": ["name"],
              "properties": {"name": {"enum": names}, "parameters": optional({
                  "type": "object", "properties": {
                      "binary_data": optional({"type": "boolean", "description": "answer this output as binary"}),
                      # Triton's classification extension (tritonclient's class_count): not served, 422
                      "classification": {**_NEVER, "description": "not served (Triton's classification extension)"},
                  }})}}
    params: JsonSchema = {"type": "object", "properties": {
        "timeout": _TIMEOUT,
        "binary_data_output": optional({"type": "boolean", "description": "answer every output as binary"})}}
    rules: list[JsonSchema] = []
    if model.card.task == "translation":
        params["properties"] |= limits.options()
        params["allOf"] = limits.rules()
        # the n-best output exists when a list is asked for
        wants_nbest = {"required": ["outputs"], "properties": {"outputs": {
            "type": "array", "contains": {"type": "object", "properties": {"name": {"const": "hypotheses"}}}}}}
        rules.append({"if": wants_nbest, "then": {"required": ["parameters"], "properties": {
            "parameters": {"type": "object", **_given("num_hypotheses", "integer")}}}})
    return {"type": "object", "required": ["inputs"],
            "properties": {"id": optional({"type": "string"}), "parameters": optional(params),
                           "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
                           "outputs": optional({"type": "array", "items": output})},
            **({"allOf": rules} if rules else {}),
            "examples": [{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                      "data": ["A man is riding a bike."]}]}]}


def infer_paths(settings: Settings, registry: ModelRegistry | None) -> dict[str, dict[str, JsonSchema]]:
    """INFER_PATHS -> {model name: its request body}: what a request may hold depends on the model it
    names (its outputs, the parameters it reads), so the document spells each model's path out."""
    if registry is None:
        return {}
    limits = TranslationLimits(registry)
    bodies = {model.name: infer(model, settings, limits) for model in registry.latest()}
    return {path: bodies for path in INFER_PATHS}


def request_bodies(settings: Settings, registry: ModelRegistry | None) -> dict[tuple[str, str], JsonSchema]:
    """(path, method) -> the request body's schema, for the operations whose rules go beyond
    their pydantic model."""
    limits = TranslationLimits(registry)
    bodies = {("/v1/sentiment", "post"): v1_sentiment(settings),
              ("/v1/translate", "post"): v1_translate(settings, limits)}
    return bodies | {(path, "post"): generate(settings, limits) for path in GENERATE_PATHS}


def model_names(path: str, registry: ModelRegistry | None) -> list[str] | None:
    """The models a ``{name}`` in ``path`` can name where only some can (generate: the translators)."""
    if registry is None or path not in GENERATE_PATHS:
        return None
    return sorted({m.name for m in registry.all() if m.card.task == "translation"})
