"""Tool calls through real runtimes under the real gunicorn server, driven by the official
`openai` client (issue 21).

The model is SmolLM2 with a chat template that teaches the Hermes convention for calls
(`tests/runtimes/tool_template.jinja`, built into `.cache/smollm2-tools.gguf` by `make
test`), served as `hermes_template`:
- `cpp`: in-process llama_cpp. The GGUF's template renders the tools; a required or named
  call is held to its tool's schema by a grammar, so even a 135M model's calls are valid;
  the pool reads the calls out of the text, streaming included;
- `server`: a llama-server child, run with --jinja: it renders the tools with the same
  template and parses the calls itself; the pool passes them on. A `required` or named
  choice, which llama-server does not hold itself, the pool holds: the template renders
  the prompt (/apply-template) and llama-server's JSON-schema grammar holds the calls.

With `auto`, a 135M model calls a tool when the conversation shows it how: FEW_SHOT holds
three earlier questions each answered by a call and its result (greedy decoding copies
the pattern), so both backends' auto path is tested on a real call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.integration.conftest import Server, openai_client, start_server, stop_server, template_copy
from tests.integration.tool_cases import ASK, FEW_SHOT, NAMED, TIME, WEATHER

pytestmark = pytest.mark.integration

MODELS = ("cpp", "server")


@pytest.fixture(scope="module")
def tool_gguf() -> str:
    return template_copy("LLM_POOL_TEST_TOOL_GGUF", "smollm2-tools.gguf")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tool_gguf: str) -> Iterator[Server]:
    common = {"model_path": tool_gguf, "prompt_format": "hermes_template", "enabled": True}
    settings = {
        "service": {"log_level": "warning"},
        "engine": {
            "decoding": {"temperature": 0, "max_tokens": 64},
            "models": {
                "cpp": {**common, "backend": "llama_cpp", "gguf_n_ctx": 2048, "gguf_n_threads": 1},
                "server": {**common, "backend": "llama_server", "llama_server_n_ctx": 2048},
            },
        },
    }
    srv = start_server(tmp_path_factory.mktemp("tools"), settings, timeout_s=180)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai_client(server) as c:
        yield c


def ask(client: openai.OpenAI, model: str, **extra: Any) -> Any:
    body: dict[str, Any] = {"model": model, "messages": ASK, "tools": [WEATHER, TIME], "temperature": 0}
    return client.chat.completions.create(**{**body, **extra})


@pytest.mark.parametrize("model", MODELS)
def test_a_named_tool_is_called_with_arguments_that_fit_its_schema(client: openai.OpenAI, model: str) -> None:
    completion = ask(client, model, tool_choice=NAMED, parallel_tool_calls=False)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert "tool_call>" not in (choice.message.content or "")


@pytest.mark.parametrize("model", MODELS)
def test_a_required_call_is_one_of_the_tools(client: openai.OpenAI, model: str) -> None:
    completion = ask(client, model, tool_choice="required", parallel_tool_calls=False)
    [call] = completion.choices[0].message.tool_calls or []
    assert call.function.name in ("get_weather", "get_time")
    json.loads(call.function.arguments)


def calls_of(stream: Any) -> tuple[dict[int, dict[str, str]], str, str | None]:
    """(calls by index, the text, the finish reason) joined from a chat stream."""
    calls: dict[int, dict[str, str]] = {}
    text, finish = [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text.append(delta.content or "")
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"name": "", "arguments": ""})
            if piece.function and piece.function.name:
                assert piece.id, "the piece that names the function carries the call's id"
                call["name"] = piece.function.name
            call["arguments"] += (piece.function.arguments or "") if piece.function else ""
        finish = chunk.choices[0].finish_reason or finish
    return calls, "".join(text), finish


@pytest.mark.parametrize("model", MODELS)
def test_an_auto_call_comes_back_whole_and_streamed_alike(client: openai.OpenAI, model: str) -> None:
    whole = ask(client, model, messages=FEW_SHOT, tools=[WEATHER]).choices[0]
    assert whole.finish_reason == "tool_calls", whole
    [expected] = whole.message.tool_calls or []
    assert expected.function.name == "get_weather"
    assert set(json.loads(expected.function.arguments)) == {"city"}
    assert "tool_call>" not in (whole.message.content or "")
    calls, text, finish = calls_of(ask(client, model, messages=FEW_SHOT, tools=[WEATHER], stream=True))
    assert finish == "tool_calls" and "tool_call>" not in text  # no piece of the call as text
    [call] = calls.values()
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == json.loads(expected.function.arguments)


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_named_call_joins_to_the_same_call(client: openai.OpenAI, model: str) -> None:
    whole = ask(client, model, tool_choice=NAMED, parallel_tool_calls=False).choices[0].message
    calls, text, finish = calls_of(
        ask(client, model, tool_choice=NAMED, parallel_tool_calls=False, stream=True)
    )
    assert finish == "tool_calls" and "tool_call>" not in text
    [call] = calls.values()
    [expected] = whole.tool_calls or []
    assert call["name"] == expected.function.name
    assert json.loads(call["arguments"]) == json.loads(expected.function.arguments)


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_result_round_trip_gets_an_answer(client: openai.OpenAI, model: str) -> None:
    first = ask(client, model, messages=FEW_SHOT, tools=[WEATHER]).choices[0].message
    [call] = first.tool_calls or []
    history = [
        *FEW_SHOT,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees and sunny"},
    ]
    answer = client.chat.completions.create(
        model=model, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=32, temperature=0
    )
    message = answer.choices[0].message
    assert message.content and not message.tool_calls
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_the_models_say_they_call_tools(client: openai.OpenAI) -> None:
    caps = {card.id: (card.model_extra or {})["capabilities"] for card in client.models.list().data}
    assert caps["cpp"]["tool_calls"] and caps["cpp"]["forced_tool_calls"]
    assert caps["server"]["tool_calls"] and caps["server"]["forced_tool_calls"]


@pytest.mark.parametrize("model", MODELS)
def test_responses_create_with_function_tools(client: openai.OpenAI, model: str) -> None:
    """The Responses API's flat function tools: the call is a function_call output item,
    streamed with its arguments' delta and done events."""
    tool = {"type": "function", **WEATHER["function"]}
    named = {"type": "function", "name": "get_weather"}
    body: dict[str, Any] = {
        "model": model,
        "input": ASK,
        "tools": [tool],
        "tool_choice": named,
        "temperature": 0,
    }
    response = client.responses.create(**body)
    [item] = [o for o in response.output if o.type == "function_call"]
    assert item.name == "get_weather" and item.call_id
    assert set(json.loads(item.arguments)) == {"city"}
    events = list(client.responses.create(**body, stream=True))
    kinds = [e.type for e in events]
    assert (
        "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    )
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done.arguments) == json.loads(item.arguments)
    assert kinds[-1] == "response.completed"
