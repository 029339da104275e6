"""Field types and validators of the HTTP contract, each one declaration that both checks
a request and, through `blueprints.contract`, describes it in /openapi.json.

Refusals: a value the pool understands but cannot honour (`tools`, `n: 2`, ...) is a 400
naming the field (`InvalidParam`), not a 422. The validators below declare what is
honoured the way marshmallow's own validators do, so apispec documents it (`enum`,
`maxItems`, `maxProperties`), but they pass during field validation: `refuse()` checks
them once the whole body is otherwise valid (after the schema-level rules too), in
declaration order, so a malformed body is a 422 before anything is refused, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from llmpool.errors import InvalidParam


class Refusal(validate.Validator):
    """Marks what the pool honours; `refuses(value)` says whether to answer 400 instead.

    `param` names the field in the 400 (default: its dotted path in the body); `{value}`
    in the message is replaced by the refused value."""

    param: str | None
    message: str

    def __call__(self, value: Any) -> Any:
        return value  # checked by `refuse`, after the body's 422 rules

    def refuses(self, value: Any) -> bool:
        raise NotImplementedError

    def refusal(self, value: Any, path: str) -> InvalidParam:
        return InvalidParam(self.param or path, self.message.replace("{value}", str(value)))


class Only(Refusal, validate.OneOf):
    """Honoured only at `choices` (documented as the field's enum)."""

    def __init__(self, choices: Iterable[Any], message: str, *, param: str | None = None) -> None:
        super().__init__(tuple(choices))
        self.message = message
        self.param = param

    def refuses(self, value: Any) -> bool:
        return value not in self.choices


class OnlyEmpty(Refusal, validate.Length):
    """Honoured only empty: an array or object with no items (`maxItems`/`maxProperties` 0)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(max=0)
        self.message = message
        self.param = param

    def refuses(self, value: Any) -> bool:
        return bool(value)


class OnlyValue(Refusal):
    """Honoured only at one JSON value that is not hashable (an object); documented as
    `enum: [value]` by `blueprints.contract`."""

    def __init__(self, value: Any, message: str, *, param: str | None = None) -> None:
        self.value = value
        self.message = message
        self.param = param

    def refuses(self, value: Any) -> bool:
        return bool(value != self.value)


def refuse(schema: Schema, data: Mapping[str, Any], path: str = "") -> None:
    """Raise InvalidParam for the first refused value of a loaded body (declaration order,
    nested objects and the objects of arrays included); null values are never refused."""
    for name, refusals, nested, items in _checked_fields(schema):
        value = data.get(name)
        if value is None:
            continue
        dotted = f"{path}{name}"
        for validator in refusals:
            if validator.refuses(value):
                raise validator.refusal(value, dotted)
        if nested is not None and isinstance(value, Mapping):
            refuse(nested, value, f"{dotted}.")
        if items is not None and isinstance(value, list):
            for index, item in enumerate(value):  # items of an array of objects, one by one
                if isinstance(item, Mapping):
                    refuse(items, item, f"{dotted}.{index}.")


_Checked = tuple[str, tuple[Refusal, ...], Schema | None, Schema | None]


def _checked_fields(schema: Schema) -> list[_Checked]:
    """The fields `refuse` looks at, in declaration order: those with a refusal and those
    holding objects (`Nested`, or a `List` of them), worked out once per schema instance
    (a body schema has about thirty fields, most of which refuse nothing)."""
    known: list[_Checked] | None = getattr(schema, "_llmpool_checked", None)
    if known is not None:
        return known
    checked: list[_Checked] = []
    for name, field in schema.fields.items():
        refusals = tuple(v for v in field.validators if isinstance(v, Refusal))
        nested = field.schema if isinstance(field, fields.Nested) else None
        inner = field.inner if isinstance(field, fields.List) else None
        items = inner.schema if isinstance(inner, fields.Nested) else None
        if refusals or nested is not None or items is not None:
            checked.append((name, refusals, nested, items))
    schema._llmpool_checked = checked  # type: ignore[attr-defined]  # on the instance: no registry to leak
    return checked


class Stop(fields.Field):
    """OpenAI's `stop`: a string or a list of strings (max 16), normalised to a list."""

    MAX = 16

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValidationError("Must be a string or an array of strings.")
        if len(items) > self.MAX:
            raise ValidationError(f"At most {self.MAX} stop strings.")
        return items


class Prompt(fields.Field):
    """OpenAI Completions' `prompt`: one non-empty string (a list of exactly one string is
    taken as that string). Token-id arrays and several prompts are a 400 naming `prompt`.
    An empty prompt is refused: with no BOS token (SmolLM2, for one) it is no tokens at
    all, which no runtime can continue."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            value = value[0]
        if isinstance(value, str):
            if not value:
                raise ValidationError("Must not be empty.")
            return value
        if isinstance(value, list) and value:
            raise InvalidParam(
                "prompt", "Send one prompt as a string: token arrays and several prompts are not supported."
            )
        raise ValidationError("Must be a string.")


# -- query parameters ------------------------------------------------------------------
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


class Flag(fields.String):
    """A boolean query parameter in any of the usual spellings, any case; anything else is
    a 422, so a typo such as `force=ture` is not silently read as false. Documented as
    the pattern made from the same spellings."""

    PATTERN = re.compile("^(?:" + "|".join(_any_case(w) for w in TRUE + FALSE) + ")$")
    default_error_messages = {"invalid": "Must be true or false (or 1/0, yes/no, on/off)."}

    def __init__(self, **kwargs: Any) -> None:
        metadata = {**kwargs.pop("metadata", {}), "pattern": self.PATTERN.pattern}
        super().__init__(metadata={**metadata, "examples": ["true", "false"]}, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or not self.PATTERN.match(value):
            raise self.make_error("invalid")
        return value.lower() in TRUE

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else ("true" if value else "false")


class Count(fields.Integer):
    """A non-negative integer query parameter up to `maximum` (ASCII digits only:
    `str.isdigit` also accepts '²', which int() refuses)."""

    def __init__(self, maximum: int, **kwargs: Any) -> None:
        self.message = f"Must be an integer from 0 to {maximum}."
        super().__init__(validate=validate.Range(0, maximum, error=self.message), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not (isinstance(value, str) and value.isascii() and value.isdigit()):
            raise ValidationError(self.message)
        return int(value)


class ToolChoice(fields.Field):
    """tool_choice: "none", "auto", "required", or a named function, written as Chat
    Completions does ({"type": "function", "function": {"name"}}) or, `flat`, as the
    Responses API does ({"type": "function", "name"}). Loaded in Chat's shape; the serving
    layer checks the name against the tools."""

    MODES = ("none", "auto", "required")

    def __init__(self, *, flat: bool = False, **kwargs: Any) -> None:
        kind: dict[str, Any] = {"type": "string", "enum": ["function"]}
        name: dict[str, Any] = {"type": "string"}
        function = {"type": "object", "properties": {"name": name}, "required": ["name"]}
        named = {
            "type": "object",
            "properties": {"type": kind, "name": name} if flat else {"type": kind, "function": function},
            "required": ["type", "name"] if flat else ["type", "function"],
            "additionalProperties": False,
        }
        modes = {"type": "string", "enum": list(self.MODES)}
        kwargs.setdefault("metadata", {"oneOf": [modes, named, {"type": "null"}]})
        super().__init__(**kwargs)
        self.flat = flat

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            if value not in self.MODES:
                raise ValidationError(f"Must be one of: {', '.join(self.MODES)}, or a named function.")
            return value
        if not isinstance(value, dict) or value.get("type") != "function":
            raise ValidationError('Must be "none", "auto", "required" or a named function.')
        holder = value if self.flat else value.get("function")
        name = holder.get("name") if isinstance(holder, dict) else None
        if not isinstance(name, str) or not name:
            raise ValidationError("A named tool choice needs the function's name.")
        keys = {"type", "name"} if self.flat else {"type", "function"}
        if set(value) != keys or (not self.flat and set(value["function"]) != {"name"}):
            raise ValidationError(f"A named tool choice takes {' and '.join(sorted(keys))} only.")
        return {"type": "function", "function": {"name": name}}
