"""Structured output through real runtimes under the real gunicorn server, driven by the
official `openai` client (issue 21): `chat.completions.parse` and `responses.parse` with a
pydantic model, a streamed JSON answer, and a reasoning model whose thoughts stay free
while its answer is held to the schema.

- `cpp`: SmolLM2 in-process (llama_cpp): a grammar from the schema (llmpool.backends.
  llama_grammar), so even a 135M model's answers are valid;
- `server`: SmolLM2 under a real llama-server child, which builds its own grammar from
  the `response_format` the pool passes on;
- `cpp-forced`: the think-template copy (built by `make test`), whose prompt opens the
  thought block: the grammar lets the thoughts run to `</think>`, then demands the JSON;
- `server-forced`: the same under llama-server, which would constrain the thoughts too:
  structured output with thinking on is refused there, naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pydantic
import pytest
import requests

from tests.conftest import SMOLLM2_REF
from tests.integration.conftest import Server, openai_client, start_server, stop_server
from tests.integration.test_reasoning import FEW_SHOT, model, think_gguf  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int


ASK = [{"role": "user", "content": "Describe Paris as JSON with its name, country and population."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, think_gguf: str) -> Iterator[Server]:  # noqa: F811
    cpp = {"backend": "llama_cpp", "model_path": SMOLLM2_REF, "gguf_n_ctx": 2048, "gguf_n_threads": 1}
    server = {"backend": "llama_server", "model_path": SMOLLM2_REF, "llama_server_n_ctx": 2048}
    cpp["enabled"] = server["enabled"] = True
    settings = {
        "service": {"log_level": "warning"},
        "engine": {
            "decoding": {"temperature": 0, "max_tokens": 64},
            "models": {
                "cpp": cpp,
                "server": {**server, "llama_server_n_threads": 1},
                "cpp-forced": model("llama_cpp", think_gguf),
                "server-forced": model("llama_server", think_gguf),
            },
        },
    }
    srv = start_server(tmp_path_factory.mktemp("structured"), settings, timeout_s=180)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai_client(server) as c:
        yield c


@pytest.mark.parametrize("name", ["cpp", "server"])
def test_chat_completions_parse_gives_the_pydantic_object(client: openai.OpenAI, name: str) -> None:
    completion = client.chat.completions.parse(
        model=name,
        messages=ASK,
        response_format=City,
        max_completion_tokens=64,
        temperature=0,  # type: ignore[arg-type]
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, City), message.content
    assert message.parsed.name and message.parsed.country


@pytest.mark.parametrize("name", ["cpp", "server"])
def test_responses_parse_gives_the_pydantic_object(client: openai.OpenAI, name: str) -> None:
    response = client.responses.parse(
        model=name, input="Describe Paris as JSON.", text_format=City, max_output_tokens=64, temperature=0
    )
    assert isinstance(response.output_parsed, City), response.output_text
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


@pytest.mark.parametrize("name", ["cpp", "server"])
def test_a_streamed_answer_joins_to_json_that_fits_the_schema(client: openai.OpenAI, name: str) -> None:
    schema = City.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    chunks = client.chat.completions.create(
        model=name,
        messages=ASK,
        response_format=fmt,
        max_tokens=64,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    City.model_validate_json(text)


def test_json_object_on_llama_cpp_is_a_json_object(server: Server) -> None:
    body = {"model": "cpp", "messages": ASK, "response_format": {"type": "json_object"}, "max_tokens": 48}
    r = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)


def test_on_a_thinking_model_the_schema_binds_the_answer_not_the_thoughts(server: Server) -> None:
    fmt: dict[str, Any] = {"type": "json_schema", "json_schema": {"name": "g", "schema": GREETING}}
    body = {"model": "cpp-forced", "messages": FEW_SHOT, "response_format": fmt, "max_tokens": 96}
    r = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert "greeting" in (message.get("reasoning_content") or ""), message  # thought freely
    answer = json.loads(message["content"])  # then answered to the schema
    assert set(answer) == {"greeting"} and isinstance(answer["greeting"], str)
    assert "think>" not in message["content"]


GREETING = {
    "type": "object",
    "properties": {"greeting": {"type": "string", "maxLength": 40}},
    "required": ["greeting"],
    "additionalProperties": False,
}


def test_where_the_constraint_would_bind_the_thoughts_the_pair_is_refused(server: Server) -> None:
    greeting = {"format": {"type": "json_schema", "name": "g", "schema": GREETING}}
    body = {"model": "server-forced", "messages": FEW_SHOT, "text": greeting, "max_output_tokens": 128}
    r = requests.post(f"{server.url}/v1/responses", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "thinking", r.text
    assert "llama_server" in r.json()["detail"]["message"]
    r = requests.post(f"{server.url}/v1/responses", json={**body, "thinking": "disabled"}, timeout=120)
    assert r.status_code == 200, r.text  # thoughts off: llama-server's grammar holds the answer
    assert set(json.loads(r.json()["output_text"])) == {"greeting"}
