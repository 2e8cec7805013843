"""Unit tests of anyrouter_proxy.batch: item parsing and checks, result rendering."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from anyrouter_proxy.batch import (
    INVALID_LINE,
    BatchLimits,
    ItemError,
    check_items,
    counts,
    endpoint_of,
    new_batch_id,
    output_lines,
    parse_json_lines,
    prepare,
    render,
)
from anyrouter_proxy.errors import InvalidRequest, RequestTooLarge
from anyrouter_proxy.storage.batches import BatchRecord
from anyrouter_proxy.types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def item(custom_id: Any = "c1", **over: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": dict(BODY), **over}


# -- endpoint_of ---------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "endpoint"), [
    ("/v1/chat/completions", CHAT),
    ("/api/v1/chat/completions", CHAT),
    ("/chat/completions", CHAT),
    ("/v1/chat/completions/", CHAT),
    ("/v1/chat/completions?x=1", CHAT),
    ("/v1/completions", COMPLETIONS),
    ("/api/v1/completions", COMPLETIONS),
    ("/completions", COMPLETIONS),
    ("/v1/embeddings", EMBEDDINGS),
    ("/api/v1/embeddings", EMBEDDINGS),
    ("/embeddings", EMBEDDINGS),
    ("/v1/messages", MESSAGES),
    ("/api/v1/messages", MESSAGES),
    ("/messages", MESSAGES),
])
def test_endpoint_of_accepts_the_proxied_endpoints(url: str, endpoint: str) -> None:
    assert endpoint_of(url) == endpoint


@pytest.mark.parametrize("url", [
    "/v1/images/generations", "/v1/messages/count_tokens", "/v1/models", "/v1/batch",
    "/v2/chat/completions", "/api/chat/completions", "/api/v1/v1/chat/completions",
    "/v1", "/api/v1", "/", "", "/V1/chat/completions", "/v1/chat", None, 42,
    ["/v1/chat/completions"], {"path": "/v1/chat/completions"},
])
def test_endpoint_of_refuses_anything_else(url: Any) -> None:
    assert endpoint_of(url) is None


# -- parse_json_lines ----------------------------------------------------------------------


def test_parse_json_lines_one_item_a_line() -> None:
    raw = b'{"custom_id": "a"}\n\n  \n{"custom_id": "b"}\r\n[1, 2]\n7'
    assert parse_json_lines(raw) == [{"custom_id": "a"}, {"custom_id": "b"}, [1, 2], 7]


def test_parse_json_lines_garbage_line_becomes_a_failing_item() -> None:
    items = parse_json_lines(b'{"custom_id": "a"}\n{not json\n{"custom_id": "c"}\n')
    assert items[0] == {"custom_id": "a"} and items[2] == {"custom_id": "c"}
    assert set(items[1]) == {INVALID_LINE}
    assert "line 2" in items[1][INVALID_LINE]
    with pytest.raises(ItemError) as caught:
        prepare(items[1])
    assert caught.value.code == "invalid_json"
    assert "line 2" in caught.value.message


def test_parse_json_lines_counts_lines_including_blank_ones() -> None:
    items = parse_json_lines(b'\n\n{"a": 1}\n\n"unterminated\n')
    assert len(items) == 2
    assert "line 5" in items[1][INVALID_LINE]


@pytest.mark.parametrize("raw", [b"", b"\n", b"\r\n\r\n", b"   \n\t\n"])
def test_parse_json_lines_empty(raw: bytes) -> None:
    assert parse_json_lines(raw) == []


# -- check_items ---------------------------------------------------------------------------


@pytest.mark.parametrize("items", [None, {}, "x", 5, [], {"requests": [1]}])
def test_check_items_needs_a_non_empty_list(items: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_items(items, BatchLimits())
    assert caught.value.status == 400 and caught.value.param == "requests"


def test_check_items_max_items() -> None:
    limits = BatchLimits(max_items=3)
    items = [item(f"c{i}") for i in range(3)]
    assert check_items(items, limits) is items
    with pytest.raises(RequestTooLarge) as caught:
        check_items([*items, item("c3")], limits)
    exc = caught.value
    assert exc.status == 413 and exc.code == "request_too_large"
    assert "3" in exc.message and "max_items" in exc.message
    assert exc.metadata == {"max_items": 3}


def test_check_items_duplicate_custom_id_named() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_items([item("a"), item("twice"), item("b"), item("twice")], BatchLimits())
    assert "twice" in caught.value.message
    assert caught.value.param == "custom_id"


def test_check_items_leaves_malformed_items_to_fail_alone() -> None:
    # Items without a string custom_id are not duplicates of each other: each fails alone.
    items = [5, "x", {"custom_id": 1}, {"custom_id": 1}, {}, {}, item("ok")]
    assert check_items(items, BatchLimits()) == items


def test_check_items_size_before_duplicates() -> None:
    with pytest.raises(RequestTooLarge):
        check_items([item("a"), item("a"), item("b")], BatchLimits(max_items=2))


# -- prepare -------------------------------------------------------------------------------


def test_prepare_valid_item() -> None:
    assert prepare(item()) == (CHAT, BODY)
    assert prepare({"custom_id": "x", "url": "/embeddings", "body": {"input": "a"}}) == \
        (EMBEDDINGS, {"input": "a"})  # method defaults to POST
    assert prepare(item(method="post"))[0] == CHAT
    assert prepare(item(body={**BODY, "stream": False}))[0] == CHAT


@pytest.mark.parametrize(("bad", "code"), [
    (42, "invalid_request"),
    ("item", "invalid_request"),
    ([item()], "invalid_request"),
    (None, "invalid_request"),
    ({"method": "POST", "url": "/v1/chat/completions", "body": BODY}, "invalid_request"),
    (item(custom_id=""), "invalid_request"),
    (item(custom_id=7), "invalid_request"),
    (item(method="GET"), "invalid_request"),
    (item(method="PUT"), "invalid_request"),
    (item(url="/v1/images/generations"), "invalid_url"),
    (item(url=None), "invalid_url"),
    ({"custom_id": "c", "method": "POST", "body": BODY}, "invalid_url"),
    (item(body="hi"), "invalid_request"),
    (item(body=None), "invalid_request"),
    (item(body=[BODY]), "invalid_request"),
    ({"custom_id": "c", "method": "POST", "url": "/v1/chat/completions"}, "invalid_request"),
    (item(body={**BODY, "stream": True}), "streaming_not_supported"),
    ({INVALID_LINE: "line 3 is not valid JSON"}, "invalid_json"),
])
def test_prepare_error_codes(bad: Any, code: str) -> None:
    with pytest.raises(ItemError) as caught:
        prepare(bad)
    assert caught.value.code == code
    assert caught.value.message


def test_prepare_unknown_url_message_lists_the_endpoints() -> None:
    with pytest.raises(ItemError) as caught:
        prepare(item(url="/v1/files"))
    assert "/v1/files" in caught.value.message
    assert "/chat/completions" in caught.value.message


# -- counts, render, output_lines ----------------------------------------------------------


def ok(custom_id: str, status: int = 200) -> dict[str, Any]:
    return {"id": "batch_req_1", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": "gen-1", "body": {}},
            "error": None}


def err(custom_id: str | None, code: str = "invalid_request") -> dict[str, Any]:
    return {"id": "batch_req_2", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": "m"}}


def record(results: list[dict[str, Any] | None], status: str = "in_progress") -> BatchRecord:
    return BatchRecord(id=new_batch_id(), key_name="alice", mode="async", total=len(results),
                       status=status, created_at=1_700_000_000.0, results=results)


def test_counts() -> None:
    batch = record([ok("a"), ok("b", 404), ok("c", 429), err("d"), None, ok("f", 302), None])
    assert counts(batch) == {"total": 7, "completed": 2, "failed": 3}
    assert counts(record([None, None])) == {"total": 2, "completed": 0, "failed": 0}


def test_render_in_progress_has_no_results() -> None:
    batch = record([ok("a"), None])
    body = render(batch)
    assert body["id"].startswith("batch_") and len(body["id"]) > len("batch_")
    assert body["object"] == "batch" and body["status"] == "in_progress"
    assert body["request_counts"] == {"total": 2, "completed": 1, "failed": 0}
    assert "results" not in body
    assert body["created_at"] == "2023-11-14T22:13:20Z"
    assert body["completed_at"] is None


@pytest.mark.parametrize("status", ["completed", "cancelled"])
def test_render_finished_has_results_in_order(status: str) -> None:
    results = [ok("a"), err("b", "batch_cancelled"), ok("c", 402)]
    batch = record(list(results), status=status)
    batch.completed_at = 1_700_000_060.0
    body = render(batch)
    assert body["status"] == status
    assert body["results"] == results
    assert body["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert body["completed_at"] == "2023-11-14T22:14:20Z"
    orjson.dumps(body)  # serialisable as is


def test_output_lines() -> None:
    results = [ok("a"), None, err(None)]
    raw = output_lines(record(results))
    assert raw.endswith(b"\n")
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert lines == [results[0], results[2]]
    assert output_lines(record([None])) == b""


def test_batch_ids_are_unique() -> None:
    ids = {new_batch_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("batch_") for i in ids)
