"""InvokeModel for the fake Bedrock's text embedding models, written from AWS's model
parameter references: Titan Text Embeddings v1 (`{inputText}` only) and v2 (`dimensions`
256/512/1024, `normalize`, `embeddingTypes`), Cohere Embed v3 (`texts` up to 96,
`input_type` required, `truncate`, `embedding_types`) and v4 (plus `output_dimension`
256/512/1024/1536, `max_tokens`). A body a model would refuse gets its 400
ValidationException; a model that is no embedding model, the invalid-identifier one.

Vectors are made from the text (`fake_vector`), multiples of 1/128 so that float32 holds
them exactly; Titan counts `len(words) + 2` tokens per text, Cohere on Bedrock no count.
"""

from __future__ import annotations

import hashlib
from typing import Any

TITAN_V1, TITAN_V2, COHERE_V3, COHERE_V4 = "titan-v1", "titan-v2", "cohere-v3", "cohere-v4"
_IDS = {"amazon.titan-embed-text-v1": TITAN_V1, "amazon.titan-embed-g1-text-02": TITAN_V1,
        "amazon.titan-embed-text-v2:0": TITAN_V2, "cohere.embed-english-v3": COHERE_V3,
        "cohere.embed-multilingual-v3": COHERE_V3, "cohere.embed-v4:0": COHERE_V4}
_KEYS = {TITAN_V1: {"inputText"},
         TITAN_V2: {"inputText", "dimensions", "normalize", "embeddingTypes"},
         COHERE_V3: {"texts", "images", "input_type", "truncate", "embedding_types"},
         COHERE_V4: {"texts", "images", "inputs", "input_type", "truncate", "embedding_types",
                     "output_dimension", "max_tokens"}}
_SIZES = {TITAN_V1: 1536, TITAN_V2: 1024, COHERE_V3: 1024, COHERE_V4: 1536}
_DIMENSIONS = {TITAN_V2: ("dimensions", (256, 512, 1024)),
               COHERE_V4: ("output_dimension", (256, 512, 1024, 1536))}
_TRUNCATE = {COHERE_V3: ("NONE", "START", "END"), COHERE_V4: ("NONE", "LEFT", "RIGHT")}
INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")
MAX_TEXTS = 96

Failure = tuple[int, str, str]  # status, x-amzn-ErrorType, message


def family(model: str) -> str | None:
    """The family of a model id, inference profile (`us.` ...) or ARN naming one."""
    name = model.rsplit("/", 1)[-1]
    name = name.split(".", 1)[1] if name.split(".", 1)[0] in ("us", "eu", "apac") else name
    return _IDS.get(name)


def fake_vector(text: str, size: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % len(digest)] - 128) / 128 for i in range(size)]


def titan_tokens(text: str) -> int:
    return len(text.split()) + 2


def invoke(model: str, body: Any) -> dict[str, Any] | Failure:
    """The model's answer to a body, or the error AWS would send."""
    kind = family(model)
    if kind is None:
        return 400, "ValidationException", "The provided model identifier is invalid."
    if not isinstance(body, dict):
        return _malformed("#: expected type: JSONObject")
    extra = sorted(set(body) - _KEYS[kind])
    if extra:
        return _malformed(f"extraneous key [{extra[0]}] is not permitted")
    size = _SIZES[kind]
    if kind in _DIMENSIONS:
        field, allowed = _DIMENSIONS[kind]
        if field in body and body[field] not in allowed:
            return _malformed(f"#/{field}: {body[field]} is not a valid enum value")
        size = body.get(field, size)
    if kind in (TITAN_V1, TITAN_V2):
        return _titan(body, size)
    return _cohere(kind, body, size)


def _titan(body: dict[str, Any], size: int) -> dict[str, Any] | Failure:
    text = body.get("inputText")
    if not isinstance(text, str):
        return _malformed("#: required key [inputText] not found")
    if not text:
        return _malformed("#/inputText: expected minLength: 1, actual: 0")
    vector = fake_vector(text, size)
    answer: dict[str, Any] = {"embedding": vector, "inputTextTokenCount": titan_tokens(text)}
    if "dimensions" in body or "normalize" in body or "embeddingTypes" in body:  # v2
        answer["embeddingsByType"] = {"float": vector}
    return answer


def _cohere(kind: str, body: dict[str, Any], size: int) -> dict[str, Any] | Failure:
    texts = body.get("texts")
    if "input_type" not in body:
        return _malformed("#: required key [input_type] not found")
    if body["input_type"] not in INPUT_TYPES:
        return _malformed(f"#/input_type: {body['input_type']} is not a valid enum value")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return _malformed("#/texts: expected type: JSONArray")
    if len(texts) > MAX_TEXTS:
        return _malformed(f"#/texts: expected maximum item count: {MAX_TEXTS}, "
                          f"found: {len(texts)}")
    if "truncate" in body and body["truncate"] not in _TRUNCATE[kind]:
        return _malformed(f"#/truncate: {body['truncate']} is not a valid enum value")
    vectors = [fake_vector(text, size) for text in texts]
    types = body.get("embedding_types")
    embeddings: Any = vectors if types is None else {"float": vectors}
    return {"id": "c0ffee00-fake-cohere-embed", "texts": texts, "embeddings": embeddings,
            "response_type": "embeddings_floats" if types is None else "embeddings_by_type"}


def _malformed(detail: str) -> Failure:
    return (400, "ValidationException",
            f"Malformed input request: {detail}, please reformat your input and try again.")
