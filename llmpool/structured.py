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
from llmpool.generation import Final, OutputFormat, ToolCall, ToolUse
from llmpool.job import Job

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


def check_answer(job: Job, final: Final | None, model: str) -> OutputSchemaViolation | None:
    """What is wrong with a finished job's answer, given what its request asked for."""
    request = job.request
    if request.count_only:
        return None  # a count of the prompt: its one sampled token is no answer
    finish = final.finish_reason if final is not None else "stop"
    if request.tools is not None:
        calls = job.tool_calls
        problem = tool_violation(request.tools, calls, finish, model)
        if problem is not None or calls:
            return problem  # an answer of tool calls has no text to check
    if request.output_format is not None:
        return violation(request.output_format, job.output_text, finish, model)
    return None


def tool_violation(
    use: ToolUse, calls: tuple[ToolCall, ...], finish_reason: str, model: str
) -> OutputSchemaViolation | None:
    """Why the model's tool calls are not what the request allowed, or None."""
    cut = " (the answer was cut short by max_tokens)" if finish_reason == "length" else ""
    if not calls and use.held:
        wanted = "a call" if use.choice == "required" else f"a call of '{use.function}'"
        return OutputSchemaViolation(
            f"tools: tool_choice asked for {wanted}; none was made{cut}", model=model
        )
    if len(calls) > 1 and not use.parallel:
        return OutputSchemaViolation(
            f"tools: {len(calls)} calls, but parallel_tool_calls is false{cut}", model=model
        )
    allowed = {t.name: t for t in use.allowed()}
    for i, call in enumerate(calls):
        tool = allowed.get(call.name)
        if tool is None:
            return OutputSchemaViolation(
                f"tools: call {i} names '{call.name}', not an allowed tool ({', '.join(allowed)}){cut}",
                model=model,
            )
        fmt = OutputFormat("json_schema", f"tools: call {i} ('{call.name}') arguments", tool.parameters)
        problem = violation(fmt, call.arguments, finish_reason, model)
        if problem is not None:
            return problem
    return None
