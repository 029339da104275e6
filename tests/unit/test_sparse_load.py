"""blueprints.sparse: loading only the fields a body names gives what the full walk gives.

Every request body schema, every one of its fields set to each of a handful of values
(good and bad), alone and beside the required ones, plus unknown keys and non-objects: the
loaded dict (its keys in order too) or the error messages are the same either way.
"""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import Schema, ValidationError, fields

from blueprints.anthropic_schemas import CountTokensRequestSchema, MessagesRequestSchema
from blueprints.openai_schemas import ChatCompletionsRequestSchema, CompletionsRequestSchema
from blueprints.schemas import ResponsesRequestSchema
from blueprints.sparse import PLANS, SparseLoad

BASES: dict[type[Schema], dict[str, Any]] = {
    ChatCompletionsRequestSchema: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    CompletionsRequestSchema: {"model": "m", "prompt": "hi"},
    ResponsesRequestSchema: {"model": "m", "input": "hi"},
    MessagesRequestSchema: {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    CountTokensRequestSchema: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
}
VALUES: tuple[Any, ...] = (None, 0, 1, 2.5, -1, "", "x", "auto", True, False, [], ["a"], {}, {"type": "text"})


def outcome(schema: Schema, body: Any, *, sparse: bool) -> tuple[str, Any]:
    plan = SparseLoad._plan
    try:
        if not sparse:
            SparseLoad._plan = lambda self, data: None  # type: ignore[method-assign]  # the full walk
        return "ok", list(schema.load(body).items())
    except ValidationError as e:
        return "error", e.messages
    except Exception as e:  # a refusal (InvalidParam) is raised from post_load
        return type(e).__name__, str(e)
    finally:
        SparseLoad._plan = plan  # type: ignore[method-assign]


def bodies(cls: type[Schema]) -> list[Any]:
    base = BASES[cls]
    out: list[Any] = [base, {}, dict(base, unknown_key=1), [base], "text", {"model": "m"}]
    for name in cls().load_fields:
        for value in VALUES:
            out.append(dict(base, **{name: value}))
            out.append({name: value})
    return out


@pytest.mark.parametrize("cls", list(BASES), ids=lambda c: c.__name__)
def test_a_sparse_load_is_the_full_load(cls: type[Schema]) -> None:
    schema = cls()
    assert isinstance(schema, SparseLoad)
    checked = 0
    for body in bodies(cls):
        assert outcome(schema, body, sparse=True) == outcome(schema, body, sparse=False), body
        checked += 1
    assert checked > 200


def test_the_plans_are_bounded_and_start_over() -> None:
    schema = ChatCompletionsRequestSchema()
    base = BASES[ChatCompletionsRequestSchema]
    names = [n for n in schema.load_fields if n not in base]
    for i in range(PLANS + 5):  # more key sets than it keeps
        body = dict(base, **{names[i % len(names)]: None, names[(i // len(names)) % len(names)]: None})
        schema.load(body)
        assert len(schema.__dict__["_llmpool_plans"]) <= PLANS


class Renamed(SparseLoad):
    a = fields.Integer(load_default=1)
    b = fields.Integer(attribute="bee", load_default=2)


def test_a_schema_with_a_renamed_field_takes_the_full_walk() -> None:
    assert Renamed()._plan({"a": 5}) is None
    assert Renamed().load({"a": 5}) == {"a": 5, "bee": 2}


def test_a_required_field_that_is_absent_is_still_an_error() -> None:
    with pytest.raises(ValidationError) as e:
        ChatCompletionsRequestSchema().load({"model": "m"})
    assert e.value.messages == {"messages": ["Missing data for required field."]}


def test_a_chat_body_deserializes_only_the_fields_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the sparse load is for: a body naming 3 of 45 fields runs 3 fields' deserialize
    (and its one message's five: a message schema is small and loads whole), not every
    declared field's (bench/README.md)."""
    seen: list[str | None] = []
    deserialize = fields.Field.deserialize

    def counted(self: fields.Field, value: Any, attr: str | None = None, *args: Any, **kwargs: Any) -> Any:
        seen.append(attr)
        return deserialize(self, value, attr, *args, **kwargs)

    monkeypatch.setattr(fields.Field, "deserialize", counted)
    schema = ChatCompletionsRequestSchema()
    body = {**BASES[ChatCompletionsRequestSchema], "max_tokens": 8}
    loaded = schema.load(body)
    assert loaded["max_tokens"] == 8 and loaded["temperature"] is None  # defaults still there
    named = ["max_tokens", "messages", "model"]
    message = ["content", "name", "role", "tool_call_id", "tool_calls"]
    assert sorted(a for a in seen if a is not None) == sorted(named + message)
    seen.clear()
    monkeypatch.setattr(SparseLoad, "_plan", lambda self, data: None)  # the full walk, for contrast
    assert schema.load(body) == loaded
    assert len(seen) > 40
