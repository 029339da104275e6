"""The request of POST /v1/responses as the core's `GenerationRequest` (SPEC §3, §10).

The pool's own fields (`input`, `messages`, `decoding`, `thinking`, ...) and the fields
the official `openai` SDK sends map onto one engine path:

- `max_output_tokens`, `temperature`, `top_p` go into `decoding`. Given both ways
  (`max_output_tokens` and `decoding.max_tokens`), they must agree, else a 400 naming the
  top-level field: neither silently wins.
- `reasoning.effort` maps onto `thinking`: `none`/`minimal` -> `disabled`, `low` and up
  -> `enabled`; the model must offer that mode (else 400 thinking_unsupported, as for
  `thinking`). Given with a `thinking` other than `default`, they must agree.
- `input` as OpenAI input items: system/developer messages become `instructions` (after
  the top-level `instructions`, joined with a blank line); user/assistant messages the
  conversation, which must end with a user message. A single user message is `input`,
  exactly as a plain string would be; more turns are `messages`.
- What the pool cannot honour is a 400 naming the field (`InvalidParam`), never dropped;
  the fields it cannot honour at all (`store`, `tools`, ...) are refused by the request
  schema before the body reaches this module.
"""

from __future__ import annotations

from typing import Any

from llmpool.errors import InvalidParam
from llmpool.generation import Content, GenerationRequest, Message
from llmpool.pool import Pool
from llmpool.serving import formats, tool_use
from llmpool.serving.messages import split_system


class InputItems(list[dict[str, Any]]):
    """`input` given as OpenAI Responses input items: a list of {role, content} dicts
    (role system, developer, user or assistant; content normalised by the request schema)."""


# reasoning.effort -> thinking mode.
EFFORT_THINKING = {
    "none": "disabled",
    "minimal": "disabled",
    "low": "enabled",
    "medium": "enabled",
    "high": "enabled",
    "xhigh": "enabled",
}
# Top-level SDK field -> our decoding key.
TOP_LEVEL_DECODING = {"max_output_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p"}


def to_generation_request(body: dict[str, Any], p: Pool) -> GenerationRequest:
    instructions, input_, messages = _prompt(body)
    return GenerationRequest(
        input=input_,
        messages=messages,
        instructions=instructions,
        source_lang_code=body["source_lang_code"],
        target_lang_code=body["target_lang_code"],
        thinking=_thinking(body),
        decoding=p.settings.decoding.requested(_decoding(body), within="decoding."),
        output_format=formats.from_text_format(body.get("text")),
        tools=tool_use.from_responses(body),
    )


def _decoding(body: dict[str, Any]) -> dict[str, Any]:
    decoding = dict(body["decoding"])
    for top, ours in TOP_LEVEL_DECODING.items():
        value = body[top]
        if value is None:
            continue
        if decoding.get(ours) is not None and decoding[ours] != value:
            raise InvalidParam(
                top, f"'{top}' and 'decoding.{ours}' disagree; send one of them.", "invalid_value"
            )
        decoding[ours] = value
    return decoding


def _thinking(body: dict[str, Any]) -> str:
    effort = (body["reasoning"] or {}).get("effort")
    thinking: str = body["thinking"]
    if effort is None:
        return thinking
    mapped = EFFORT_THINKING[effort]
    if thinking not in ("default", mapped):
        raise InvalidParam(
            "reasoning.effort",
            f"reasoning.effort '{effort}' and thinking '{thinking}' disagree.",
            "invalid_value",
        )
    return mapped


def _prompt(body: dict[str, Any]) -> tuple[str | None, Content | None, tuple[Message, ...] | None]:
    """(instructions, input, messages) of the request."""
    instructions = body["instructions"]
    items = body["input"]
    if not isinstance(items, InputItems):
        messages = body["messages"]
        turns = None if messages is None else tuple(Message(m["role"], m["content"]) for m in messages)
        return instructions, items, turns
    system, turns_ = split_system(items, "input", lambda index: f"input[{index}].content")
    system = ([instructions] if instructions else []) + system
    joined = "\n\n".join(system) if system else None
    if len(turns_) == 1:
        return joined, turns_[0].content, None
    return joined, None, tuple(turns_)
