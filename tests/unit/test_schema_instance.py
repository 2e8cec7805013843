"""minimal_instance: the smallest value a JSON Schema accepts, checked with jsonschema
itself, on hand-written schemas and on what pydantic and the openai SDK generate."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from anyrouter_proxy.providers.schema_instance import minimal_instance


class Size(StrEnum):
    SMALL = "small"
    LARGE = "large"


class Item(BaseModel):
    sku: str = Field(min_length=8, max_length=8)
    size: Size
    quantity: int = Field(gt=0, le=10)
    price: float = Field(ge=0.5, multiple_of=0.25)


class Node(BaseModel):  # recursive: only a finite branch can be filled
    label: str
    child: Node | None


class Order(BaseModel):
    id: str
    status: Literal["open", "shipped"]
    items: list[Item] = Field(min_length=2)
    note: str | None = None
    tree: Node
    pair: tuple[int, str]


SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
     "required": ["a"]},
    {"type": "array", "items": {"type": "number", "exclusiveMinimum": 3}, "minItems": 3},
    {"type": ["null", "string"], "format": "date-time"},
    {"type": "string", "format": "email"},
    {"type": "string", "minLength": 11},
    {"type": "integer", "minimum": -5, "maximum": -2},
    {"type": "integer", "exclusiveMaximum": 0},
    {"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 2},
    {"type": "integer", "minimum": 7, "multipleOf": 5},
    {"enum": ["x", "y"]},
    {"const": {"k": [1, 2]}},
    {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
               {"required": ["b"], "properties": {"b": {"const": 3}}}]},
    {"type": "object", "properties": {"x": {}, "y": {}}, "minProperties": 2},
    {"$defs": {"Leaf": {"type": "object", "properties": {"v": {"type": "boolean"}},
                        "required": ["v"]}},
     "type": "object", "properties": {"leaf": {"$ref": "#/$defs/Leaf"}}, "required": ["leaf"]},
    Order.model_json_schema(),
    to_strict_json_schema(Order),
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_the_instance_is_valid(schema: dict[str, Any]) -> None:
    instance = minimal_instance(schema)
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(instance)]
    assert not errors, (instance, errors)


def test_pydantic_reads_it_back() -> None:
    order = Order.model_validate(minimal_instance(to_strict_json_schema(Order)))
    assert order.status == "open" and len(order.items) == 2 and order.tree.child is None
    assert order.items[0].quantity == 1 and order.items[0].price == 0.5


def test_only_required_properties_first_enum_value_lower_bounds() -> None:
    schema = {"type": "object", "required": ["level", "mode"],
              "properties": {"level": {"type": "integer", "minimum": 3},
                             "mode": {"enum": ["fast", "slow"]},
                             "extra": {"type": "string"}}}
    assert minimal_instance(schema) == {"level": 3, "mode": "fast"}


def test_no_constraints_and_foreign_refs_give_null() -> None:
    assert minimal_instance({}) is None
    assert minimal_instance(True) is None
    assert minimal_instance({"$ref": "https://example.com/other.json"}) is None


def test_a_schema_with_no_finite_instance_gives_null_rather_than_recursing_forever() -> None:
    schema = {"$defs": {"L": {"type": "object", "properties": {"next": {"$ref": "#/$defs/L"}},
                              "required": ["next"]}}, "$ref": "#/$defs/L"}
    assert minimal_instance(schema) is None
