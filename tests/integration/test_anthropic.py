"""Anthropic's Messages API through real runtimes under the real gunicorn server, driven by
the official `anthropic` SDK (issue 21).

Models (the template copies `make test` builds, see tests/integration/test_tool_calls.py
and test_reasoning.py):
- `cpp`, `server`: SmolLM2 with the Hermes tool template, in-process llama_cpp and a
  llama-server child. A named tool choice is held to its schema by llama_cpp's grammar;
  `auto` calls come from a few-shot history written as Anthropic blocks (tool_use, then
  tool_result), so the history's mapping is what makes the model call;
- `think`: SmolLM2 with the Qwen3 thinking template (llama_cpp): its thoughts are
  thinking blocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import Server, start_server, stop_server, template_copy
from tests.integration.test_reasoning import FEW_SHOT as THINKING_FEW_SHOT

pytestmark = pytest.mark.integration

WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "tool", "name": "get_weather"}


def _shown(i: int, city: str) -> list[dict[str, Any]]:
    """One earlier question answered by a call and its result, as Anthropic writes them."""
    call = {"type": "tool_use", "id": f"toolu_{i}", "name": "get_weather", "input": {"city": city}}
    result = {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": "18 C"}
    return [
        {"role": "user", "content": f"Weather in {city}?"},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]


# Each result turn is followed by the next question in the same user message, as
# Anthropic's clients send it.
FEW_SHOT: list[dict[str, Any]] = []
for _i, _city in enumerate(["Paris", "Berlin", "Madrid"]):
    FEW_SHOT.extend(_shown(_i, _city))
FEW_SHOT.append({"role": "user", "content": "Weather in Rome?"})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tools = template_copy("LLM_POOL_TEST_TOOL_GGUF", "smollm2-tools.gguf")
    think = template_copy("LLM_POOL_TEST_THINK_GGUF", "smollm2-think.gguf")
    cpp = {"backend": "llama_cpp", "gguf_n_ctx": 2048, "gguf_n_threads": 1, "enabled": True}
    hermes = {"model_path": tools, "prompt_format": "hermes_template"}
    settings = {
        "service": {"log_level": "warning"},
        "engine": {
            # This SDK sends no sampling fields: the pool's defaults decide (greedy here).
            "decoding": {"temperature": 0, "max_tokens": 64},
            "models": {
                "cpp": {**cpp, **hermes},
                "server": {**hermes, "backend": "llama_server", "llama_server_n_ctx": 2048, "enabled": True},
                "think": {
                    **cpp,
                    "model_path": think,
                    "prompt_format": "qwen3_template",
                    "enable_thinking": True,
                },
            },
        },
    }
    srv = start_server(tmp_path_factory.mktemp("anthropic"), settings, timeout_s=180)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[Any]:
    import anthropic

    with anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.mark.parametrize("model", ["cpp", "server"])
def test_a_message_and_its_stream_agree(client: Any, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=24, messages=ASK)
    [block] = message.content
    assert block.type == "text" and block.text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    with client.messages.stream(model=model, max_tokens=24, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == block.text and final.content[0].text == text  # greedy: the same answer
    assert final.usage.output_tokens == message.usage.output_tokens


@pytest.mark.parametrize("model", ["cpp", "server"])
def test_count_tokens_is_what_the_answer_reads(client: Any, model: str) -> None:
    body: dict[str, Any] = {"messages": FEW_SHOT, "tools": [WEATHER], "system": "Use the tools."}
    counted = client.messages.count_tokens(model=model, **body)
    answered = client.messages.create(model=model, max_tokens=48, **body)
    assert counted.input_tokens == answered.usage.input_tokens > 100


@pytest.mark.parametrize("model", ["cpp", "server"])
def test_a_named_tool_is_called_with_input_that_fits_its_schema(client: Any, model: str) -> None:
    body: dict[str, Any] = {"messages": ASK, "tools": [WEATHER], "tool_choice": NAMED}
    message = client.messages.create(model=model, max_tokens=64, **body)
    assert message.stop_reason == "tool_use"
    [call] = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "get_weather" and set(call.input) == {"city"} and isinstance(call.input["city"], str)
    assert not any(b.type == "text" and "tool_call>" in b.text for b in message.content)
    with client.messages.stream(model=model, max_tokens=64, **body) as stream:
        final = stream.get_final_message()
    [streamed] = [b for b in final.content if b.type == "tool_use"]
    assert streamed.input == call.input and final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", ["cpp", "server"])
def test_an_auto_call_from_an_anthropic_history_then_its_result(client: Any, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=64, messages=FEW_SHOT, tools=[WEATHER])
    assert message.stop_reason == "tool_use", message
    [call] = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "get_weather" and set(call.input) == {"city"}
    history = [
        *FEW_SHOT,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 C"}]},
    ]
    answer = client.messages.create(
        model=model, max_tokens=32, messages=history, tools=[WEATHER], tool_choice={"type": "none"}
    )
    assert answer.content and answer.content[0].type == "text" and answer.content[0].text.strip()
    assert answer.stop_reason in ("end_turn", "max_tokens")


def test_thoughts_are_thinking_blocks(client: Any) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    ask: dict[str, Any] = {"messages": THINKING_FEW_SHOT, "thinking": thinking}
    message = client.messages.create(model="think", max_tokens=1100, **ask)
    kinds = [b.type for b in message.content]
    assert kinds == ["thinking", "text"], message
    assert "greeting" in message.content[0].thinking and "think>" not in message.content[1].text
    assert "Hi there" in message.content[1].text
    with client.messages.stream(
        model="think", max_tokens=1100, messages=THINKING_FEW_SHOT, thinking=thinking
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == kinds
    assert final.content[0].thinking == message.content[0].thinking
    assert events[0] == "message_start" and events[-1] == "message_stop"
    disabled = client.messages.create(
        model="think", max_tokens=64, messages=THINKING_FEW_SHOT, thinking={"type": "disabled"}
    )
    assert [b.type for b in disabled.content] == ["text"]


def test_a_stop_sequence_ends_the_answer_and_is_named(client: Any) -> None:
    message = client.messages.create(
        model="think", max_tokens=1100, messages=THINKING_FEW_SHOT, stop_sequences=["there"]
    )
    text = [b for b in message.content if b.type == "text"]
    assert text and text[0].text.rstrip() == "Hi", message
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "there"


def test_errors_are_anthropics(client: Any, server: Server) -> None:
    import anthropic

    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=8, messages=ASK)
    with pytest.raises(anthropic.BadRequestError) as refused:
        document = [{"type": "document", "source": {}}]
        client.messages.create(model="cpp", max_tokens=8, messages=[{"role": "user", "content": document}])
    assert "document" in json.dumps(refused.value.body)


def test_messages_parse_gives_the_pydantic_object(client: Any) -> None:
    """The SDK's structured output (output_config.format) on the grammar-held runtime."""
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    ask = [{"role": "user", "content": "Describe Paris as JSON with its name and country."}]
    message = client.messages.parse(model="cpp", max_tokens=64, messages=ask, output_format=City)
    city = message.parsed_output
    assert isinstance(city, City) and city.name
