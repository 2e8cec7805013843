"""The OpenAI Responses API as FakeOpenAI serves it on /v1/responses: the response object
and the whole event stream (reasoning items with their summary and encrypted content,
messages, function calls, usage), as OpenAI's API reference and the official SDK's types
define them.

It answers with a function call to the first tool when the request has tools and its
input does not end with a function_call_output, else with text; with `reasoning` it
reasons first (reasoning tokens in the usage, encrypted_content when asked for with
`include`). It refuses what OpenAI refuses of a self-contained call: a previous_response_id
or store: true (it keeps nothing), an item reference (nothing to find it in), and a
reasoning item it did not write.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.schema_sample import fragments, sample_instance

REASONING_SUMMARY = "Thinking about it."
ENCRYPTED_PREFIX = "gAAAA-fake-encrypted-"  # what this fake writes in encrypted_content
TEXT_PIECES = ("Hello ", "from the ", "fake Responses API!")
ARGUMENT_PIECES = ('{"ci', 'ty": "Pa', 'ris"}')


def responses_problem(body: dict[str, Any]) -> str | None:
    """What the real API would refuse of a gateway's self-contained call."""
    if body.get("previous_response_id") is not None:
        return "previous_response_id cannot be used with store: false in this fake"
    if body.get("store") is not False:
        return "this fake keeps nothing: store must be false"
    items = body.get("input")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and (item.get("type") == "item_reference" or (
                "type" not in item and "role" not in item)):
            return (f"Item with id '{item.get('id')}' not found. Items are not persisted "
                    "when `store` is set to false.")
        if isinstance(item, dict) and item.get("type") == "reasoning":
            encrypted = item.get("encrypted_content")
            if not isinstance(encrypted, str) or not encrypted.startswith(ENCRYPTED_PREFIX):
                return f"Item '{item.get('id')}' of type 'reasoning' cannot be decrypted"
        if isinstance(item, dict) and item.get("type") == "message" \
                and item.get("role") != "assistant" and "id" in item:
            return "Unknown parameter: 'input[].id'"
    return None


def structured_pieces(body: dict[str, Any]) -> tuple[str, ...] | None:
    """For text.format json_schema: an instance of the schema, as JSON in a few pieces."""
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") != "json_schema":
        return None
    return tuple(fragments(json.dumps(sample_instance(fmt.get("schema") or {}))))


class FakeResponse:
    """One answer: its items, built as the stream goes, and the events that build them."""

    def __init__(self, body: dict[str, Any], response_id: str, text: str | None = None,
                 usage: dict[str, Any] | None = None) -> None:
        self.body = body
        self.id = response_id
        self.seq = 0
        self.text_pieces = (text,) if text is not None else structured_pieces(body) \
            or TEXT_PIECES
        self.usage_override = usage
        self.reasoning = isinstance(body.get("reasoning"), dict) and \
            body["reasoning"].get("effort") not in (None, "none")
        items = body.get("input")
        last = items[-1] if isinstance(items, list) and items else {}
        tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
        self.tool = tools[0]["name"] if tools and (
            not isinstance(last, dict) or last.get("type") != "function_call_output") else None

    # -- the whole response -----------------------------------------------------------------

    def shell(self, status: str = "in_progress") -> dict[str, Any]:
        body = self.body
        return {"id": self.id, "object": "response", "created_at": int(time.time()),
                "status": status, "background": False, "error": None,
                "incomplete_details": None, "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
                "model": body.get("model"), "output": [],
                "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "previous_response_id": None,
                "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"),
                              "summary": (body.get("reasoning") or {}).get("summary")},
                "service_tier": "default", "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
                "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []),
                "top_p": body.get("top_p", 1.0), "truncation": "disabled", "usage": None,
                "user": None, "metadata": body.get("metadata") or {}}

    def output(self) -> list[dict[str, Any]]:
        items = []
        if self.reasoning:
            items.append(self.reasoning_item())
        if self.tool:
            items.append(self.call_item("".join(ARGUMENT_PIECES), "completed"))
        else:
            items.append(self.message_item("".join(self.text_pieces), "completed"))
        return items

    def usage(self) -> dict[str, Any]:
        reasoning = 64 if self.reasoning else 0
        return {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 8},
                "output_tokens": 12 + reasoning,
                "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": 48 + reasoning, **(self.usage_override or {})}

    def whole(self) -> dict[str, Any]:
        return {**self.shell("completed"), "output": self.output(), "usage": self.usage()}

    def reasoning_item(self) -> dict[str, Any]:
        summary = [{"type": "summary_text", "text": REASONING_SUMMARY}] \
            if (self.body.get("reasoning") or {}).get("summary") else []
        item: dict[str, Any] = {"id": "rs_fake1", "type": "reasoning", "summary": summary}
        if "reasoning.encrypted_content" in (self.body.get("include") or []):
            item["encrypted_content"] = ENCRYPTED_PREFIX + self.id
        return item

    def message_item(self, text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}] \
            if status == "completed" else []
        return {"id": "msg_fake1", "type": "message", "status": status, "content": content,
                "role": "assistant"}

    def call_item(self, arguments: str, status: str) -> dict[str, Any]:
        return {"id": "fc_fake1", "type": "function_call", "status": status,
                "arguments": arguments, "call_id": "call_fake1", "name": self.tool}

    # -- the event stream -------------------------------------------------------------------

    def event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, **data, "sequence_number": self.seq}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

    def events(self) -> list[bytes]:
        events = [self.event("response.created", response=self.shell()),
                  self.event("response.in_progress", response=self.shell())]
        index = 0
        if self.reasoning:
            events += self._reasoning_events(index)
            index += 1
        events += self._call_events(index) if self.tool else self._text_events(index)
        events.append(self.event("response.completed", response=self.whole()))
        return events

    def _reasoning_events(self, index: int) -> list[bytes]:
        item = self.reasoning_item()
        events = [self.event("response.output_item.added", output_index=index,
                             item={"id": item["id"], "type": "reasoning", "summary": []})]
        if item["summary"]:
            where = {"item_id": item["id"], "output_index": index, "summary_index": 0}
            events += [
                self.event("response.reasoning_summary_part.added", **where,
                           part={"type": "summary_text", "text": ""}),
                self.event("response.reasoning_summary_text.delta", **where,
                           delta=REASONING_SUMMARY),
                self.event("response.reasoning_summary_text.done", **where,
                           text=REASONING_SUMMARY),
                self.event("response.reasoning_summary_part.done", **where,
                           part={"type": "summary_text", "text": REASONING_SUMMARY})]
        return [*events, self.event("response.output_item.done", output_index=index,
                                    item=item)]

    def _text_events(self, index: int) -> list[bytes]:
        where = {"item_id": "msg_fake1", "output_index": index, "content_index": 0}
        text = "".join(self.text_pieces)
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        events = [self.event("response.output_item.added", output_index=index,
                             item=self.message_item("", "in_progress")),
                  self.event("response.content_part.added", **where, part=part)]
        events += [self.event("response.output_text.delta", **where, delta=piece, logprobs=[])
                   for piece in self.text_pieces]
        return [*events,
                self.event("response.output_text.done", **where, text=text, logprobs=[]),
                self.event("response.content_part.done", **where, part={**part, "text": text}),
                self.event("response.output_item.done", output_index=index,
                           item=self.message_item(text, "completed"))]

    def _call_events(self, index: int) -> list[bytes]:
        where = {"item_id": "fc_fake1", "output_index": index}
        arguments = "".join(ARGUMENT_PIECES)
        events = [self.event("response.output_item.added", output_index=index,
                             item=self.call_item("", "in_progress"))]
        events += [self.event("response.function_call_arguments.delta", **where, delta=piece)
                   for piece in ARGUMENT_PIECES]
        return [*events,
                self.event("response.function_call_arguments.done", **where,
                           arguments=arguments),
                self.event("response.output_item.done", output_index=index,
                           item=self.call_item(arguments, "completed"))]

    def error_event(self) -> bytes:
        return self.event("error", code="server_error", message="upstream exploded",
                          param=None)
