"""A reasoning model's thoughts never reach a client as its answer, through real runtimes
under the real gunicorn server: llama_cpp in-process and llama-server children.

SmolLM2 is no reasoning model, but greedy decoding copies a pattern: two earlier turns
whose answers are `<think>\\n…\\n</think>\\n\\nHi there!` make it write the same (FEW_SHOT).
Two copies of the model:
- the stock GGUF (ChatML template): the model writes `<think>` itself, inline;
- `.cache/smollm2-think.gguf` (tests/runtimes/make_template_copies.sh, built by `make test`,
  path in LLM_POOL_TEST_THINK_GGUF): its template opens `<think>` in the prompt, so the
  output starts inside the block and only `</think>` appears ("forced open"), and
  enable_thinking=false closes an empty block instead.
Each is served as `qwen3_template` by llama_cpp and by llama_server (whose own parser
splits the thoughts for the think GGUF, and whose inline markers the pool splits for the
stock one). Checked on /v1/responses (JSON and stream) and /v1/chat/completions (JSON and
stream), and with thinking "disabled" where the template (or the pool) can switch it off.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import SMOLLM2_REF
from tests.integration.conftest import Server, sse_events, start_server, stop_server, template_copy

pytestmark = pytest.mark.integration

FEW_SHOT = [
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "<think>\nThe user wants a greeting.\n</think>\n\nHi there!"},
] * 2 + [{"role": "user", "content": "Say hi."}]
MODELS = ("cpp-inline", "cpp-forced", "server-inline", "server-forced")


@pytest.fixture(scope="module")
def think_gguf() -> str:
    return template_copy("LLM_POOL_TEST_THINK_GGUF", "smollm2-think.gguf")


def model(backend: str, path: str) -> dict[str, Any]:
    keys: dict[str, Any] = {"backend": backend, "model_path": path, "prompt_format": "qwen3_template"}
    keys |= {"enable_thinking": True, "enabled": True}
    if backend == "llama_server":
        keys |= {"llama_server_n_ctx": 2048, "llama_server_n_threads": 1}
    else:
        keys |= {"gguf_n_ctx": 2048, "gguf_n_threads": 1}
    return keys


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, think_gguf: str) -> Iterator[Server]:
    settings = {
        "service": {"log_level": "warning"},
        "engine": {
            "decoding": {"temperature": 0, "max_tokens": 24},
            "models": {
                "cpp-inline": model("llama_cpp", SMOLLM2_REF),
                "cpp-forced": model("llama_cpp", think_gguf),
                "server-inline": model("llama_server", SMOLLM2_REF),
                "server-forced": model("llama_server", think_gguf),
            },
        },
    }
    srv = start_server(tmp_path_factory.mktemp("reasoning"), settings, timeout_s=180)
    yield srv
    stop_server(srv)


def no_markers(text: str | None) -> bool:
    return "think>" not in (text or "")


def chat_stream(url: str, body: dict[str, Any]) -> tuple[str, str]:
    """(content, reasoning_content) joined from a streamed chat completion's deltas."""
    content, reasoning = [], []
    chat = {**body, "stream": True}
    with requests.post(f"{url}/v1/chat/completions", json=chat, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    content.append(choice["delta"].get("content") or "")
                    reasoning.append(choice["delta"].get("reasoning_content") or "")
    return "".join(content), "".join(reasoning)


def check_split(url: str, name: str) -> None:
    """FEW_SHOT to `name`: thoughts in reasoning_text / response.reasoning_text.delta /
    reasoning_content (JSON and stream), the answer free of them, all four agreeing."""
    body = {"model": name, "messages": FEW_SHOT}
    r = requests.post(f"{url}/v1/responses", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert "greeting" in (out["reasoning_text"] or ""), out
    assert "Hi there" in out["output_text"] and no_markers(out["output_text"]), out
    assert no_markers(out["reasoning_text"]), out

    events = sse_events(url, body)
    answer = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    thoughts = "".join(d["delta"] for n, d in events if n == "response.reasoning_text.delta")
    assert (answer, thoughts) == (out["output_text"], out["reasoning_text"])
    completed = [d for n, d in events if n == "response.completed"][-1]
    assert completed["output_text"] == answer and completed["reasoning_text"] == thoughts

    r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    message = r.json()["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == (answer, thoughts)
    assert chat_stream(url, body) == (answer, thoughts)


def check_disabled(url: str, name: str) -> None:
    """thinking "disabled" is offered, and FEW_SHOT then brings no reasoning at all."""
    caps = requests.get(f"{url}/v1/admin/models/{name}", timeout=5).json()["capabilities"]
    assert caps["thinking_modes"] == ["default", "enabled", "disabled"]
    body = {"model": name, "messages": FEW_SHOT, "thinking": "disabled"}
    out = requests.post(f"{url}/v1/responses", json=body, timeout=120).json()
    assert out["reasoning_text"] is None and no_markers(out["output_text"]), out
    events = sse_events(url, body)
    assert not [d for n, d in events if n == "response.reasoning_text.delta"]


@pytest.mark.parametrize("name", MODELS)
def test_thoughts_go_to_reasoning_never_to_the_answer(server: Server, name: str) -> None:
    check_split(server.url, name)


# Not "server-inline": the stock ChatML template has no switch, and llama-server renders
# it as it is (llama_cpp renders the prompt itself, so the pool adds Qwen3's empty block).
@pytest.mark.parametrize("name", ["cpp-inline", "cpp-forced", "server-forced"])
def test_thinking_disabled_produces_no_reasoning(server: Server, name: str) -> None:
    check_disabled(server.url, name)


def test_think_gguf_opens_the_block_in_its_prompt(think_gguf: str) -> None:
    """The premise of the forced-open cases: the copy's template ends the prompt inside
    `<think>`, and closes an empty block when thinking is off."""
    import jinja2
    import llama_cpp

    from llmpool.native.loader import ensure_backends

    ensure_backends()  # the portable build keeps its backends beside the binding
    llm = llama_cpp.Llama(model_path=think_gguf, vocab_only=True, verbose=False)
    template = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"])
    llm.close()
    messages = [{"role": "user", "content": "Say hi."}]
    on = template.render(messages=messages, add_generation_prompt=True)
    off = template.render(messages=messages, add_generation_prompt=True, enable_thinking=False)
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
