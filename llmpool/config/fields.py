"""Marshmallow fields that never coerce.

Marshmallow's stock Boolean accepts "true" and 1, Integer accepts True and "3", Float
accepts "1.5". A settings file that says `"enabled": "false"` must fail loudly rather
than load a model, so these fields accept exactly one JSON type each.
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

# Field metadata marking a backend key an operator may override for one load (the admin
# API's `overrides`); its live-override rule is read off the same field's validators
# (llmpool.backends.base.constraint_of), so each bound is written once.
LIVE = {"live": True}


class MultipleOf(validate.Validator):
    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, value: int) -> int:
        if value % self.step:
            raise ValidationError(f"Must be a multiple of {self.step}.")
        return value


class StrictBool(fields.Field):
    default_error_messages = {"invalid": "Must be a JSON boolean (true/false), not {got}."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", got=type(value).__name__)
        return value


class StrictInt(fields.Integer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictFloat(fields.Float):
    """A JSON number (integer or decimal), never a string or a boolean."""

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._validated(value)


class IntOrString(fields.Field):
    """Integers or strings (llama.cpp flags such as n_gpu_layers take both)."""

    default_error_messages = {"invalid": "Must be an integer or a string."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.make_error("invalid")
        return value
