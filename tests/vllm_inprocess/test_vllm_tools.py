"""Tool calls on the in-process `vllm` backend, for real (issue 21): the HF copy of SmolLM2
with the Hermes tool template (tests/runtimes/make_template_copies.sh, in
LLM_POOL_TEST_TOOL_HF) as `hermes_template`, under gunicorn.

- `auto`: the model's template shows the tools; the pool reads the calls out of the text
  (FEW_SHOT teaches a 135M model to call, see tests/integration/tool_cases.py);
- a named or `required` choice: vLLM's structured outputs hold the answer to the calls'
  JSON schema (as vLLM's own server does it), which the pool reads back as calls.
Requests go through `requests` (this env has no `openai`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.tool_cases import ASK, FEW_SHOT, NAMED, TIME, WEATHER

pytestmark = [
    pytest.mark.filterwarnings(f"ignore::{category}:{module}")
    for category in ("DeprecationWarning", "FutureWarning", "UserWarning")
    for module in ("torch", "vllm", "transformers")
]
MODEL = "vllm-tools"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = os.environ.get("LLM_POOL_TEST_TOOL_HF") or ""
    assert (Path(path) / "chat_template.jinja").is_file(), (
        "set LLM_POOL_TEST_TOOL_HF to the tool-template HF copy (make test builds it)"
    )
    model = {
        "backend": "vllm",
        "vllm_model": path,
        "vllm_enforce_eager": True,
        "vllm_max_model_len": 2048,
        "prompt_format": "hermes_template",
        "enabled": True,
    }
    settings = {
        "service": {"log_level": "warning"},
        "engine": {"decoding": {"temperature": 0.0, "max_tokens": 64}, "models": {MODEL: model}},
    }
    srv = start_server(tmp_path_factory.mktemp("vllm-tools"), settings, timeout_s=600)
    try:
        yield srv
    finally:
        stop_server(srv)


def chat(server: Server, **body: Any) -> dict[str, Any]:
    payload = {"model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], **body}
    r = requests.post(f"{server.url}/v1/chat/completions", json=payload, timeout=300)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()["choices"][0]
    return answer


def streamed_calls(server: Server, **body: Any) -> tuple[dict[int, dict[str, str]], str, str | None]:
    payload = {"model": MODEL, "messages": ASK, "tools": [WEATHER, TIME], "stream": True, **body}
    calls: dict[int, dict[str, str]] = {}
    text, finish = [], None
    with requests.post(f"{server.url}/v1/chat/completions", json=payload, stream=True, timeout=300) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines(decode_unicode=True):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                text.append(delta.get("content") or "")
                for piece in delta.get("tool_calls") or ():
                    call = calls.setdefault(piece["index"], {"name": "", "arguments": ""})
                    call["name"] += piece["function"].get("name") or ""
                    call["arguments"] += piece["function"].get("arguments") or ""
                finish = choice["finish_reason"] or finish
    return calls, "".join(text), finish


def test_the_model_says_it_calls_tools(server: Server) -> None:
    card = requests.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]
    assert card["capabilities"]["tool_calls"] and card["capabilities"]["forced_tool_calls"]


def test_a_named_call_is_held_to_its_tools_schema(server: Server) -> None:
    choice = chat(server, tool_choice=NAMED)
    assert choice["finish_reason"] == "tool_calls", choice
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert not choice["message"]["content"]
    calls, text, finish = streamed_calls(server, tool_choice=NAMED)
    assert finish == "tool_calls" and not text
    assert list(calls.values()) == [{"name": "get_weather", "arguments": call["function"]["arguments"]}]


def test_a_required_call_is_one_of_the_tools(server: Server) -> None:
    choice = chat(server, tool_choice="required", parallel_tool_calls=False)
    assert choice["finish_reason"] == "tool_calls", choice
    [call] = choice["message"]["tool_calls"]
    name, arguments = call["function"]["name"], json.loads(call["function"]["arguments"])
    assert (name, set(arguments)) in (("get_weather", {"city"}), ("get_time", {"zone"}))


def test_an_auto_call_is_read_out_of_the_text_whole_and_streamed(server: Server) -> None:
    choice = chat(server, messages=FEW_SHOT, tools=[WEATHER])
    assert choice["finish_reason"] == "tool_calls", choice
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert set(json.loads(call["function"]["arguments"])) == {"city"}
    assert "tool_call>" not in (choice["message"]["content"] or "")
    calls, text, finish = streamed_calls(server, messages=FEW_SHOT, tools=[WEATHER])
    assert finish == "tool_calls" and "tool_call>" not in text
    [streamed] = calls.values()
    assert streamed["name"] == "get_weather"
    assert json.loads(streamed["arguments"]) == json.loads(call["function"]["arguments"])


def test_a_tool_result_round_trip_gets_an_answer(server: Server) -> None:
    call = chat(server, messages=FEW_SHOT, tools=[WEATHER])["message"]["tool_calls"][0]
    history = [
        *FEW_SHOT,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "21 degrees and sunny"},
    ]
    choice = chat(server, messages=history, tools=[WEATHER], tool_choice="none", max_tokens=32)
    assert choice["message"]["content"] and not choice["message"].get("tool_calls")
