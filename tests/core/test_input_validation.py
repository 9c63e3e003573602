"""A workflow's input is validated strictly, as JSON, and only JSON the database can store gets through: what
``validate_input`` accepts is what the published JSON Schema describes (docs/topics/workflows.md)."""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from agentflow import InvalidInput, registry, workflow
from agentflow.core.serialization import MAX_JSON_DEPTH, same_json, unstorable


class Colour(enum.Enum):
    RED = "red"


class Point(BaseModel):
    x: int
    y: int = 0


@pytest.fixture(scope="module")
def typed():
    @workflow(name="validation-typed")
    def typed(
        count: int = 1,
        ratio: float = 0.5,
        flag: bool = False,
        when: dt.datetime | None = None,
        colour: Colour = Colour.RED,
        key: uuid.UUID | None = None,
        point: Point | None = None,
        mode: Literal["a", "b"] = "a",
        anything: Any = None,
        times: Annotated[int, Field(ge=1, le=3)] = 1,
    ) -> None:
        return None

    yield typed
    registry.unregister("validation-typed")


def codes(exc: InvalidInput) -> dict[str, str]:
    return {error["field"]: error["code"] for error in exc.details}


@pytest.mark.parametrize(
    ("data", "field", "code"),
    [
        ({"count": "5"}, "count", "int_type"),
        ({"count": True}, "count", "int_type"),
        ({"count": 5.0}, "count", "int_type"),
        ({"flag": 1}, "flag", "bool_type"),
        ({"flag": "true"}, "flag", "bool_type"),
        ({"ratio": "0.5"}, "ratio", "float_type"),
        ({"point": {"x": "1"}}, "point.x", "int_type"),  # nested models are strict too
        ({"mode": "c"}, "mode", "literal_error"),
    ],
)
def test_no_coercion_between_json_types(typed, data, field, code):
    with pytest.raises(InvalidInput) as info:
        typed.validate_input(data)
    assert codes(info.value) == {field: code}


def test_what_json_writes_as_strings_is_read_from_strings(typed):
    key = uuid.uuid4()
    data = typed.validate_input(
        {"ratio": 2, "when": "2024-05-01T10:00:00Z", "colour": "red", "key": str(key), "point": {"x": 1}}
    )
    assert data["ratio"] == 2.0 and data["when"] == "2024-05-01T10:00:00Z"
    assert data["colour"] == "red" and data["key"] == str(key) and data["point"] == {"x": 1, "y": 0}


def test_python_values_are_taken_as_the_json_a_client_would_send(typed):
    when = dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    data = typed.validate_input({"when": when, "colour": Colour.RED, "point": Point(x=2), "anything": (1, 2)})
    assert data["when"] == "2024-05-01T10:00:00Z" and data["colour"] == "red"
    assert data["point"] == {"x": 2, "y": 0} and data["anything"] == [1, 2]


def test_a_value_that_is_not_json_is_invalid_input(typed):
    with pytest.raises(InvalidInput) as info:
        typed.validate_input({"anything": object()})
    assert codes(info.value) == {"": "not_serializable"}


def test_annotated_constraints_are_enforced_and_published(typed):
    # They used to vanish (get_type_hints without include_extras): times=10**9 went through unchecked.
    with pytest.raises(InvalidInput) as info:
        typed.validate_input({"times": 10**9})
    assert codes(info.value) == {"times": "less_than_equal"}
    assert typed.input_schema()["properties"]["times"] == {
        "default": 1,
        "maximum": 3,
        "minimum": 1,
        "title": "Times",
        "type": "integer",
    }


@pytest.mark.parametrize(
    ("data", "field", "code"),
    [
        ({"anything": "a\x00b"}, "anything", "null_character"),
        ({"anything": {"k\x00": 1}}, "anything.k\\u0000", "null_character"),
        ({"anything": ["ok", "\ud800"]}, "anything.1", "lone_surrogate"),
        ({"anything": {"\udfff": 1}}, "anything.\\udfff", "lone_surrogate"),
        ({"anything": {"deep": [math.inf]}}, "anything.deep.0", "non_finite_number"),
        ({"anything": math.nan}, "anything", "non_finite_number"),
        ({"ratio": math.inf}, "ratio", "non_finite_number"),
    ],
)
def test_what_the_database_cannot_store_is_invalid_input(typed, data, field, code):
    # An infinity in an Any field used to be stored as null; the others failed in PostgreSQL.
    with pytest.raises(InvalidInput) as info:
        typed.validate_input(data)
    assert info.value.details == [{"field": field, "code": code, "message": info.value.details[0]["message"]}]
    assert info.value.details[0]["message"]


def test_unstorable_finds_the_first_problem_in_document_order():
    assert unstorable({"a": [1, "x", {"b": "\x00"}], "c": math.inf}) == (
        "a.2.b",
        "null_character",
        "a string cannot contain the character U+0000",
    )
    assert unstorable({"fine": ["ünïcode ✓", "😀", 1e308, -0.0, None, True]}) is None


def test_deep_nesting_is_refused_before_pydantic_gives_up():
    # Past about 254 levels pydantic's serializer raised a ValueError: a 500 over REST.
    deep: Any = 1
    for _ in range(MAX_JSON_DEPTH - 1):
        deep = [deep]
    assert unstorable({"a": deep}) is None  # MAX_JSON_DEPTH levels, the input object included
    assert unstorable({"a": [deep]})[:2] == ("a" + ".0" * (MAX_JSON_DEPTH - 1), "too_deep")
    for _ in range(50_000):  # an iterative walk: far past Python's recursion limit
        deep = [deep]
    assert unstorable(deep)[1] == "too_deep"


def test_deeply_nested_input_is_invalid_input(typed):
    deep: Any = {}
    for _ in range(300):
        deep = {"a": deep}
    with pytest.raises(InvalidInput) as info:
        typed.validate_input({"anything": deep})
    assert info.value.details[0]["code"] == "too_deep"


def test_same_json_compares_numbers_as_jsonb_gives_them_back():
    # jsonb turns 1e+20 into 100000000000000000000, which Python reads as an int.
    assert same_json({"a": [1e20, 1.5e300, 0.1]}, {"a": [10**20, 15 * 10**299, 0.1]})
    assert same_json({"a": 1.0}, {"a": 1})
    assert not same_json({"a": 1}, {"a": True})
    assert not same_json({"a": 0}, {"a": None})
    assert not same_json({"a": "1"}, {"a": 1})
    assert not same_json({"a": [1, 2]}, {"a": [1, 2, 3]})
    assert not same_json({"a": 1}, {"b": 1})
    assert not same_json({"a": 0.1}, {"a": 0.2})
