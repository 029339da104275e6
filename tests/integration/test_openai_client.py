"""The official `openai` client against a real gunicorn+gevent pool serving SmolLM2.

Asserts on what the client returns (its typed objects and exceptions), so a shape the
client cannot parse, or an error it maps to the wrong exception, fails here.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
import requests

from tests.conftest import SMOLLM2_ID
from tests.integration.conftest import Server, integration_settings, openai_client, start_server, stop_server

pytestmark = pytest.mark.integration

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colors of the rainbow."},
]
GREEDY = {"model": SMOLLM2_ID, "messages": MESSAGES, "max_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> Iterator[Server]:
    settings = integration_settings()
    settings["engine"]["models"][SMOLLM2_ID].update(replicas=1, replica_max=1)
    srv = start_server(tmp_path_factory.mktemp("openai"), settings)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai_client(server, timeout_s=60) as c:
        yield c


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(**GREEDY)
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == SMOLLM2_ID
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The pool's metrics ride along under a key the client does not model.
    assert (completion.model_extra or {})["metrics"]["engine_output_tokens"] == usage.completion_tokens


def test_streamed_deltas_join_to_the_plain_answer(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(**GREEDY).choices[0].message.content
    chunks = list(client.chat.completions.create(**GREEDY, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(chunks) > 3 and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain


def test_stream_with_include_usage_ends_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(**GREEDY, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert 0 < last.usage.completion_tokens <= 16
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models] == [SMOLLM2_ID]
    assert models.data[0].owned_by == "llm-pool"


def test_unknown_model_raises_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(**{**GREEDY, "model": "no-such-model"})
    assert caught.value.status_code == 404
    assert caught.value.code == "unknown_model" and caught.value.type == "invalid_request_error"
    assert isinstance(caught.value.body, dict) and "no-such-model" in caught.value.body["message"]


def test_bad_parameter_raises_unprocessable_entity(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.chat.completions.create(**{**GREEDY, "temperature": 5})
    assert caught.value.status_code == 422 and caught.value.param == "temperature"


def test_unsupported_n_raises_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**GREEDY, n=2)
    assert caught.value.param == "n" and caught.value.code == "unsupported_value"


# -- Responses API (issue 14) ------------------------------------------------------------
QUESTION = "Name three colors of the rainbow."
RESPONSES_GREEDY = {"model": SMOLLM2_ID, "input": QUESTION, "max_output_tokens": 16, "temperature": 0}


@pytest.fixture(scope="module")
def pools_answer(server: Server) -> str:
    """The pool's own top-level output_text for the same greedy request, asked raw."""
    body = {"model": SMOLLM2_ID, "input": QUESTION, "decoding": {"max_tokens": 16, "temperature": 0}}
    r = requests.post(f"{server.url}/v1/responses", json=body, timeout=60)
    assert r.status_code == 200, r.text
    text: str = r.json()["output_text"]
    assert text.strip()
    return text


def test_responses_create_output_text_is_the_pools(client: openai.OpenAI, pools_answer: str) -> None:
    response = client.responses.create(**RESPONSES_GREEDY)
    assert response.output_text == pools_answer  # the SDK's own property, from `message` items
    assert response.id.startswith("resp_") and response.model == SMOLLM2_ID
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None and 0 < response.usage.output_tokens <= 16
    message = response.output[-1]
    assert isinstance(message, openai.types.responses.ResponseOutputMessage) and message.role == "assistant"


def test_responses_stream_true_yields_typed_events(client: openai.OpenAI, pools_answer: str) -> None:
    events = list(client.responses.create(**RESPONSES_GREEDY, stream=True))
    assert isinstance(events[0], openai.types.responses.ResponseCreatedEvent)
    deltas = [e.delta for e in events if isinstance(e, openai.types.responses.ResponseTextDeltaEvent)]
    assert len(deltas) >= 3 and "".join(deltas) == pools_answer
    [done] = [e for e in events if isinstance(e, openai.types.responses.ResponseTextDoneEvent)]
    assert done.text == pools_answer
    completed = events[-1]
    assert isinstance(completed, openai.types.responses.ResponseCompletedEvent)
    assert completed.response.output_text == pools_answer
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_stream_helper_final_response(client: openai.OpenAI, pools_answer: str) -> None:
    with client.responses.stream(**RESPONSES_GREEDY) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == pools_answer


def test_responses_errors_are_the_sdks_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="x")
    assert missing.value.code == "unknown_model"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=SMOLLM2_ID, input="x", tools=[{"type": "function", "name": "f", "parameters": {}}]
        )
    assert refused.value.param == "tools"


def test_completions_create_json_and_stream(client: openai.OpenAI) -> None:
    body = {"model": SMOLLM2_ID, "prompt": "The three primary colors are", "max_tokens": 12, "temperature": 0}
    completion = client.completions.create(**body)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    text = completion.choices[0].text
    assert text.strip() and completion.usage is not None and 0 < completion.usage.completion_tokens <= 12
    chunks = list(client.completions.create(**body, stream=True))
    assert len(chunks) >= 3 and "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == completion.choices[0].finish_reason


def test_a_failure_inside_a_responses_stream_raises(client: openai.OpenAI, server: Server) -> None:
    """Last in the module: a forced unload stops the running generation; the stream ends
    with response.failed, which the SDK raises. The model is loaded again after."""
    admin = f"{server.url}/v1/admin/models/{SMOLLM2_ID}"
    seen: list[str] = []
    try:
        with pytest.raises(openai.APIError, match="unloading"):
            stream = client.responses.create(
                model=SMOLLM2_ID, input="Tell me a long story.", max_output_tokens=1500, stream=True
            )
            for event in stream:
                seen.append(event.type)
                if event.type == "response.output_text.delta" and seen.count(event.type) == 2:
                    r = requests.post(f"{admin}/unload?force=true", timeout=60)
                    assert r.status_code == 200, r.text
    finally:
        requests.post(f"{admin}/load", timeout=120)
    assert "response.completed" not in seen
