"""One turn of a Responses API conversation, before it goes upstream: the request checked,
its input as items, the conversation it continues (`previous_response_id`) and the items
it references (`item_reference`) read from the stored responses, so that every upstream
call is self-contained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config.model import KeyConfig, is_metered
from .errors import NotFound
from .providers.responses_input import ITEM_REFERENCE, check_request, input_items
from .providers.shapes import unsupported
from .storage.responses import ResponseStore

TOKEN_PRICED_TOOLS = frozenset({"function", "custom"})  # billed as plain tokens


@dataclass(frozen=True, slots=True)
class Turn:
    store: bool  # keep the response (the client's `store`, default true)
    input_items: list[dict[str, Any]]  # every item the model reads: earlier turns, then its own
    new_items: list[dict[str, Any]]  # the items the request itself brought (not references)


async def prepare_turn(body: dict[str, Any], key: KeyConfig, responses: ResponseStore
                       ) -> tuple[dict[str, Any], Turn]:
    """The body as the exchanges get it (`input`: the whole conversation as items, every
    reference replaced by the item it names) and the turn; raises 400 for a bad request,
    404 response_not_found for a previous response that does not exist (or was deleted,
    or is another key's), 404 item_not_found for such an item reference."""
    check_request(body)
    if is_metered(key):
        _refuse_unpriced_tools(body.get("tools"))
    own = input_items(body["input"])
    new = [item for item in own if item["type"] != ITEM_REFERENCE]
    if len(new) < len(own):
        own = await _resolve(own, key, responses)
    previous = body.get("previous_response_id")
    items = own
    if previous is not None:
        stored = await responses.get(previous, key)
        if stored is None:
            raise NotFound(f"Response {previous} not found", code="response_not_found",
                           param="previous_response_id")
        items = [*stored.conversation, *own]
    return {**body, "input": items}, Turn(body.get("store") is not False, items, new)


async def _resolve(items: list[dict[str, Any]], key: KeyConfig, responses: ResponseStore
                   ) -> list[dict[str, Any]]:
    """`items` with each reference replaced by the stored item it names (the key's own,
    or any key's for an admin key, as for reading a stored response)."""
    refs = [item["id"] for item in items if item["type"] == ITEM_REFERENCE]
    found = await responses.items(refs, key)
    out = []
    for i, item in enumerate(items):
        if item["type"] == ITEM_REFERENCE:
            stored = found.get(item["id"])
            if stored is None:
                raise NotFound(f"Item with id '{item['id'][:100]}' not found (input[{i}]): "
                               "items are those of the responses this key stored, until "
                               "deleted", code="item_not_found", param="input")
            item = stored
        out.append(item)
    return out


def _refuse_unpriced_tools(tools: Any) -> None:
    """Built-in tools of the Responses API are billed by the provider beyond tokens (per
    call, per container, ...), which no price in the config covers: refused for keys with
    credits or a budget (before billed_extras.py, whose web search tools are Anthropic's)."""
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in TOKEN_PRICED_TOOLS:
            raise unsupported(f"tools[{i}].type", f"the built-in tool {str(kind)[:60]!r} is "
                              "billed by the provider beyond tokens, which keys with credits "
                              "or a budget cannot be charged for")
