"""The tools, questions and few-shot history the tool-call tests share (tests/integration,
tests/vllm_inprocess), in Chat Completions' shape. No client library here: the vLLM env,
which runs tests/vllm_inprocess, has no `openai`.

With `auto`, a 135M model calls a tool when the conversation shows it how: FEW_SHOT holds
three earlier questions each answered by a call and its result (greedy decoding copies
the pattern).
"""

from __future__ import annotations

import json
from typing import Any

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 24}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def _shown(i: int, city: str) -> list[dict[str, Any]]:
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    return [
        {"role": "user", "content": f"Weather in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": "18 C"},
    ]


FEW_SHOT = [m for i, city in enumerate(["Paris", "Berlin", "Madrid"]) for m in _shown(i, city)]
FEW_SHOT.append({"role": "user", "content": "Weather in Rome?"})
