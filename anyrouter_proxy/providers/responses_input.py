"""The Responses API request (pure, no I/O): its shape checks, its `input` as items, and
the items as an upstream sees them.

`check_request` runs for every route, before anything goes upstream; `input_items` turns
`input` (a string, or items) into the item list the proxy keeps and lists: every message
with its content as parts, every item with an `id` (a new one where the client gave none),
every item reference as `{"type": "item_reference", "id"}` (responses_turn.py replaces
it with the stored item it names).
`native_input` is what a provider with `native_responses` gets: the same items, less the
ids it would refuse and the reasoning items it cannot read (see responses_output.py for
the reasoning the proxy carries for Anthropic).
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from ..ids import new_item_id
from .responses_output import FOREIGN_REASONING_PREFIX
from .shapes import bad_type, need_dict, need_list, need_str, opt_str, unsupported

ITEM_REFERENCE = "item_reference"
ITEM_ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_",
                    "reasoning": "rs_"}
INPUT_ROLES = frozenset({"user", "system", "developer"})
# Fields that need OpenAI's own server-side state: the proxy keeps conversations itself.
STATEFUL_FIELDS = {"conversation": "the proxy keeps conversation state itself: use "
                                   "previous_response_id",
                   "background": "background responses are not supported by the proxy"}


def check_request(body: dict[str, Any]) -> None:
    """The shapes the gateway relies on; the rest is judged by the translation or the
    upstream. Raises InvalidRequest (400) naming the field."""
    value = body.get("input")
    if isinstance(value, list):
        if not value:
            raise InvalidRequest("'input' must not be empty", param="input")
    elif not isinstance(value, str):
        raise InvalidRequest("'input' is required: a string or a list of items",
                             param="input")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise bad_type("previous_response_id", "a response id")
    for name in ("store", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise bad_type(name, "a boolean")
    opt_str(body.get("instructions"), "instructions")
    for name in ("tools", "include"):
        if body.get(name) is not None:
            need_list(body[name], name)
    for name in ("metadata", "text", "reasoning"):
        if body.get(name) is not None:
            need_dict(body[name], name)
    for name, why in STATEFUL_FIELDS.items():
        if body.get(name) not in (None, False):
            raise unsupported(name, why)


def input_items(value: Any) -> list[dict[str, Any]]:
    """`input` as the list of items the proxy keeps (copies: the client's body is left
    as it is). A string is one user message."""
    if isinstance(value, str):
        return [{"id": new_item_id("msg_"), "type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    return [_item(raw, f"input[{i}]") for i, raw in enumerate(need_list(value, "input"))]


def _item(raw: Any, p: str) -> dict[str, Any]:
    item = dict(need_dict(raw, p))
    kind = item.get("type")
    if kind is None and "role" in item:
        kind = item["type"] = "message"
    elif kind is None and "id" in item:  # the SDKs' ItemReference: its type is optional
        kind = item["type"] = ITEM_REFERENCE
    if kind == ITEM_REFERENCE:
        ref = item.get("id")
        if not isinstance(ref, str) or not ref:
            raise bad_type(f"{p}.id", "an item id")
        return {"type": ITEM_REFERENCE, "id": ref}
    if not isinstance(kind, str):
        raise bad_type(f"{p}.type", "a string")
    if kind == "message":
        role = need_str(item.get("role"), f"{p}.role")
        content = item.get("content")
        if isinstance(content, str):
            part = "output_text" if role == "assistant" else "input_text"
            item["content"] = [{"type": part, "text": content}]
        else:
            need_list(content, f"{p}.content")
    if not isinstance(item.get("id"), str) or not item["id"]:
        item["id"] = new_item_id(ITEM_ID_PREFIXES.get(kind, "item_"))
    return item


def native_input(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as a native Responses upstream takes them: ids only where its API has them
    (assistant messages, function calls, reasoning), and no reasoning it cannot read (no
    encrypted_content of its own)."""
    out: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "reasoning":
            encrypted = item.get("encrypted_content")
            if not isinstance(encrypted, str) or encrypted.startswith(FOREIGN_REASONING_PREFIX):
                continue
        elif (kind == "message" and item.get("role") != "assistant") \
                or kind == "function_call_output":
            item = {k: v for k, v in item.items() if k != "id"}
        out.append(item)
    return out
