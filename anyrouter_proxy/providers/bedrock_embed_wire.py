"""Bedrock's text embedding models on InvokeModel (`POST /model/{modelId}/invoke`): which
family a route's model is, each family's request body for a batch of texts, and the
vectors and token count of its answer. Pure functions, from AWS's model parameter
references.

| family (model ids) | texts per call | `dimensions` | request body |
|---|---|---|---|
| Titan v1 (amazon.titan-embed-text-v1, -g1-text-02) | 1 | refused | `inputText` |
| Titan v2 (amazon.titan-embed-text-v2:0) | 1 | 256, 512, 1024 | `inputText`, `dimensions` |
| Cohere v3 (cohere.embed-english-v3, -multilingual-v3) | 96 | refused | `texts`, `input_type` |
| Cohere v4 (cohere.embed-v4:0) | 96 | 256, 512, 1024, 1536 | ..., `output_dimension` |

Titan answers `{embedding, inputTextTokenCount}`; Cohere `{embeddings}`, asked for floats
(`embedding_types: ["float"]`).

A model is recognised by its id wherever it appears in the route's model: a base model id,
a cross-region inference profile (`us.cohere.embed-v4:0`) or an ARN naming either.

Cohere's `input_type` (default `search_document`) and `truncate`, and Titan v2's
`normalize`, may be sent as extra fields of the OpenAI body; they are passed to the
families that have them and ignored by the others. Cohere's answer is read in both of its
shapes: `embeddings` as a list of float vectors (`embeddings_floats`) or by type
(`embeddings_by_type`, `{"float": [...]}`). Titan counts each input's tokens; Cohere on
Bedrock reports no count unless its answer carries `meta.billed_units.input_tokens`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .embeddings_shape import float_vector, token_count
from .shapes import bad_type, need_bool, opt_str, unsupported

COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
DEFAULT_INPUT_TYPE = "search_document"
COHERE_PER_CALL = 96  # texts per InvokeModel call (AWS's limit)


@dataclass(frozen=True, slots=True)
class Options:
    """What a client may ask beyond its texts (checked once, for every call)."""

    dimensions: int | None = None
    input_type: str = DEFAULT_INPUT_TYPE
    truncate: str | None = None
    normalize: bool | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    vectors: list[list[float]]
    tokens: int | None  # counted by the model; None: not reported


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    per_call: int  # texts one InvokeModel call takes
    dimensions: tuple[int, ...]  # the `dimensions` accepted; () refused
    extras: tuple[str, ...]  # the client's extra fields it takes (others are ignored)
    request: Callable[[list[str], Options], dict[str, Any]]
    answer: Callable[[Any], Answer | None]  # None: not this family's shape


def _titan_v1(texts: list[str], options: Options) -> dict[str, Any]:
    return {"inputText": texts[0]}


def _titan_v2(texts: list[str], options: Options) -> dict[str, Any]:
    body: dict[str, Any] = {"inputText": texts[0]}
    if options.dimensions is not None:
        body["dimensions"] = options.dimensions
    if options.normalize is not None:
        body["normalize"] = options.normalize
    return body


def _cohere(texts: list[str], options: Options) -> dict[str, Any]:
    body: dict[str, Any] = {"texts": texts, "input_type": options.input_type,
                            "embedding_types": ["float"]}
    if options.truncate is not None:
        body["truncate"] = options.truncate
    if options.dimensions is not None:
        body["output_dimension"] = options.dimensions
    return body


def _titan_answer(data: Any) -> Answer | None:
    if not isinstance(data, dict):
        return None
    vector = float_vector(data.get("embedding"))
    if vector is None:
        return None
    return Answer([vector], token_count(data.get("inputTextTokenCount")))


def _cohere_answer(data: Any) -> Answer | None:
    if not isinstance(data, dict):
        return None
    raw = data.get("embeddings")
    if isinstance(raw, dict):  # embeddings_by_type
        raw = raw.get("float")
    if not isinstance(raw, list) or not raw:
        return None
    vectors = [float_vector(item) for item in raw]
    if any(vector is None for vector in vectors):
        return None
    meta = data.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, dict) else None
    count = billed.get("input_tokens") if isinstance(billed, dict) else None
    return Answer([v for v in vectors if v is not None], token_count(count))


COHERE_EXTRAS = ("input_type", "truncate")
TITAN_V1 = Family("Titan Text Embeddings v1", 1, (), (), _titan_v1, _titan_answer)
TITAN_V2 = Family("Titan Text Embeddings v2", 1, (256, 512, 1024), ("normalize",), _titan_v2,
                  _titan_answer)
COHERE_V3 = Family("Cohere Embed v3", COHERE_PER_CALL, (), COHERE_EXTRAS, _cohere,
                   _cohere_answer)
COHERE_V4 = Family("Cohere Embed v4", COHERE_PER_CALL, (256, 512, 1024, 1536), COHERE_EXTRAS,
                   _cohere, _cohere_answer)
# Where a model id appears in a route model (id, inference profile, ARN): after the start,
# a region prefix (`us.`) or a slash.
_FAMILIES = [
    (re.compile(r"(?:^|[./])amazon\.titan-embed-(?:text-v1|g1-text-02)(?::|$)"), TITAN_V1),
    (re.compile(r"(?:^|[./])amazon\.titan-embed-text-v2(?::|$)"), TITAN_V2),
    (re.compile(r"(?:^|[./])cohere\.embed-(?:english|multilingual)-v3(?::|$)"), COHERE_V3),
    (re.compile(r"(?:^|[./])cohere\.embed-v4(?::|$)"), COHERE_V4),
]


def family_of(model: str) -> Family:
    """The family of a route's model; 400 `unsupported_parameter` (model) for any other."""
    for pattern, family in _FAMILIES:
        if pattern.search(model):
            return family
    raise unsupported("model", f"Bedrock model {model} is not a text embedding model this "
                               "gateway knows (Titan Text Embeddings v1/v2, Cohere Embed v3/v4)")


def family_options(family: Family, body: dict[str, Any], dimensions: int | None) -> Options:
    """The client's options for this family: `dimensions` it does not take is refused."""
    if dimensions is not None and dimensions not in family.dimensions:
        if not family.dimensions:
            raise unsupported("dimensions", f"{family.name} has a fixed size")
        sizes = ", ".join(str(d) for d in family.dimensions)
        raise bad_type("dimensions", f"one of {sizes} for {family.name}")
    extra = {name: body.get(name) for name in family.extras}
    input_type = opt_str(extra.get("input_type"), "input_type") or DEFAULT_INPUT_TYPE
    if input_type not in COHERE_INPUT_TYPES:
        raise bad_type("input_type", "one of " + ", ".join(COHERE_INPUT_TYPES))
    normalize = extra.get("normalize")
    return Options(dimensions, input_type, opt_str(extra.get("truncate"), "truncate"),
                   None if normalize is None else need_bool(normalize, "normalize"))


def batches(texts: list[str], family: Family) -> list[list[str]]:
    """The texts of each call, in input order."""
    size = family.per_call
    return [texts[i:i + size] for i in range(0, len(texts), size)]
