"""Structured output: the request's schema checked once when it arrives, and every
answer checked against it before it is returned.

Backends that can constrain generation (a grammar from the schema) make the answer valid
by construction; the check after generation is what makes that a guarantee on every
backend, including the ones that only pass the request on (`openai_remote`) and answers
cut short by `max_tokens`. An answer that fails it is an `output_schema_violation`, never
a valid-looking answer.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from llmpool.errors import InvalidParam, OutputSchemaViolation
from llmpool.generation import OutputFormat

# The draft a schema without "$schema" is read as (OpenAI's and llama.cpp's converters
# follow the same keywords).
_VALIDATOR = jsonschema.Draft202012Validator


def check_schema(param: str, schema: Any) -> dict[str, Any]:
    """The schema a client sent, if it is one (else a 400 naming `param`)."""
    if not isinstance(schema, dict):
        raise InvalidParam(param, f"{param}: the schema must be a JSON object", "invalid_value")
    try:
        jsonschema.validators.validator_for(schema, default=_VALIDATOR).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidParam(
            param, f"{param}: not a valid JSON schema: {exc.message}", "invalid_value"
        ) from None
    return schema


def violation(fmt: OutputFormat, answer: str, finish_reason: str, model: str) -> OutputSchemaViolation | None:
    """Why `answer` is not what `fmt` asked for, or None when it is."""
    cut = " (the answer was cut short by max_tokens)" if finish_reason == "length" else ""
    try:
        value = json.loads(answer)
    except ValueError as exc:
        return OutputSchemaViolation(f"{fmt.param}: the answer is not JSON: {exc}{cut}", model=model)
    schema = fmt.json_schema()
    validator = jsonschema.validators.validator_for(schema, default=_VALIDATOR)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the answer"
    return OutputSchemaViolation(
        f"{fmt.param}: the answer does not match its schema at {where}: {error.message}{cut}", model=model
    )
