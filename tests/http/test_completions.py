"""POST /v1/completions (OpenAI's legacy Completions API) through the Flask test client
and the official `openai` SDK in-process; the real SmolLM2 GGUF behind it (issue 14, 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient

from llmpool import prompts
from llmpool.generation import GenerationRequest
from tests.conftest import SMOLLM2_ID
from tests.http.conftest import openai_sdk

GREEDY = {"model": SMOLLM2_ID, "max_tokens": 12, "temperature": 0}
PROMPT = "The three primary colors are"


@pytest.fixture
def sdk(app: Flask) -> Iterator[openai.OpenAI]:
    with openai_sdk(app) as c:
        yield c


def complete(client: FlaskClient, **body: Any) -> Any:
    return client.post("/v1/completions", json={**GREEDY, **body})


def data_lines(r: Any) -> list[Any]:
    import json

    out: list[Any] = []
    for block in r.get_data(as_text=True).split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_json_has_openais_shape(client: FlaskClient) -> None:
    r = complete(client, prompt=PROMPT)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == SMOLLM2_ID and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["text"].strip() and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["metrics"]["engine_prompt_tokens"] == usage["prompt_tokens"]


def test_the_prompt_reaches_the_runtime_as_it_is(app: Flask, client: FlaskClient) -> None:
    """What /v1/responses renders for an `input` (the model's prompt format), sent as a raw
    prompt, is the same prompt: same token count, same greedy answer. And a bare prompt is
    not wrapped in any template: BOS plus its own tokens only."""
    spec = app.extensions["llmpool"].models[SMOLLM2_ID].spec
    rendered = prompts.render(spec, GenerationRequest(input=PROMPT)).text
    via_format = client.post(
        "/v1/responses", json={"model": SMOLLM2_ID, "input": PROMPT, "decoding": {"max_tokens": 12}}
    ).get_json()
    raw = complete(client, prompt=rendered).get_json()
    assert raw["usage"]["prompt_tokens"] == via_format["usage"]["input_tokens"]
    assert raw["choices"][0]["text"] == via_format["output_text"]
    bare = complete(client, prompt=PROMPT).get_json()
    assert bare["usage"]["prompt_tokens"] <= 8  # "<s>" + five words: no template markup
    assert bare["usage"]["prompt_tokens"] < raw["usage"]["prompt_tokens"]


def test_a_list_of_one_prompt_is_that_prompt(client: FlaskClient) -> None:
    one = complete(client, prompt=[PROMPT]).get_json()
    assert one["choices"][0]["text"] == complete(client, prompt=PROMPT).get_json()["choices"][0]["text"]


def test_stop_and_max_tokens_apply(client: FlaskClient) -> None:
    free = complete(client, prompt=PROMPT, max_tokens=24).get_json()["choices"][0]["text"]
    stop = free.strip().split()[1]
    cut = complete(client, prompt=PROMPT, max_tokens=24, stop=stop).get_json()["choices"][0]
    assert cut["text"] == free[: free.index(stop)] and cut["finish_reason"] == "stop"
    short = complete(client, prompt=PROMPT, max_tokens=2).get_json()
    assert short["usage"]["completion_tokens"] <= 2 and short["choices"][0]["finish_reason"] == "length"


def test_stream_chunks_join_to_the_json_text(client: FlaskClient) -> None:
    text = complete(client, prompt=PROMPT).get_json()["choices"][0]["text"]
    r = complete(client, prompt=PROMPT, stream=True, stream_options={"include_usage": True})
    assert r.mimetype == "text/event-stream"
    lines = data_lines(r)
    assert lines[-1] == "[DONE]"
    chunks, usage_chunk = lines[:-2], lines[-2]
    assert all(c["object"] == "text_completion" and c["id"].startswith("cmpl-") for c in chunks)
    assert len(chunks) > 3
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0


def test_a_failure_in_the_stream_is_an_error_line_without_done(client: FlaskClient) -> None:
    r = client.post("/v1/completions", json={"model": "scripted-crash", "prompt": "x", "stream": True})
    lines = data_lines(r)
    assert "[DONE]" not in lines
    assert lines[-1]["error"]["code"] == "backend_error"
    assert [c["choices"][0]["text"] for c in lines[:-1]] == ["t0 ", "t1 ", "t2 "]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True}, "echo"),
        ({"logprobs": 1}, "logprobs"),
        ({"logprobs": 0}, "logprobs"),
        ({"suffix": "end"}, "suffix"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    client: FlaskClient, extra: dict[str, Any], param: str
) -> None:
    r = complete(client, **{"prompt": PROMPT, **extra})
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_accepted_values_of_refusable_fields(client: FlaskClient) -> None:
    r = complete(
        client, prompt=PROMPT, n=1, best_of=1, echo=False, suffix="", logit_bias={}, seed=None, user="u"
    )
    assert r.status_code == 200, r.get_json()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": SMOLLM2_ID}, 422, "missing_required_parameter"),
        ({"model": SMOLLM2_ID, "prompt": 5}, 422, "invalid_value"),
        ({"model": SMOLLM2_ID, "prompt": ""}, 422, "invalid_value"),  # no tokens: nothing to continue
        ({"model": SMOLLM2_ID, "prompt": [""]}, 422, "invalid_value"),
        ({"model": SMOLLM2_ID, "prompt": "x", "temperature": 3}, 422, "invalid_value"),
        ({"model": "nope", "prompt": "x"}, 404, "unknown_model"),
        ({"model": SMOLLM2_ID, "prompt": "x", "max_tokens": 5000}, 422, "validation_error"),
    ],
)
def test_errors_are_in_openais_shape(
    client: FlaskClient, body: dict[str, Any], status: int, code: str
) -> None:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == status, r.get_json()
    assert r.get_json()["error"]["code"] == code


def test_the_sdk_reads_json_and_stream(sdk: openai.OpenAI) -> None:
    got = sdk.completions.create(model=SMOLLM2_ID, prompt=PROMPT, max_tokens=12, temperature=0)
    assert got.object == "text_completion" and got.choices[0].text.strip()
    assert got.usage is not None and got.usage.completion_tokens <= 12
    chunks = list(
        sdk.completions.create(model=SMOLLM2_ID, prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == got.choices[0].text
    assert chunks[-1].choices[0].finish_reason == got.choices[0].finish_reason


def test_the_sdk_raises_on_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.completions.create(model=SMOLLM2_ID, prompt="x", n=2)
    assert caught.value.param == "n"
    with pytest.raises(openai.APIError, match="scripted runtime crashed"):
        list(sdk.completions.create(model="scripted-crash", prompt="x", stream=True))
