"""The official `openai` client against a real gunicorn+gevent pool serving SmolLM2.

Asserts on what the client returns (its typed objects and exceptions), so a shape the
client cannot parse, or an error it maps to the wrong exception, fails here.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import SMOLLM2_ID
from tests.integration.conftest import Server, integration_settings, start_server, stop_server

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
    # No retries: an error must surface as the exception the status maps to, at once.
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
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
