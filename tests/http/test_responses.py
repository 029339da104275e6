"""POST /v1/responses and GET /v1/models through the Flask test client, real SmolLM2."""

from __future__ import annotations

from flask.testing import FlaskClient

from llmpool.metrics import METRIC_KEYS
from tests.conftest import SMOLLM2_ID
from tests.http.conftest import sse_events

# The events OpenAI's SDK needs around the deltas (SPEC §10), besides the pool's own.
OPENAI_LIFECYCLE = {
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
}

TRANSLATE = {
    "model": SMOLLM2_ID,
    "input": "The weather is pleasant today, and I would like to take a walk in the park after lunch.",
    "instructions": "Translate to Dutch. Return only the translation.",
    "decoding": {"temperature": 0.1, "top_k": 1, "max_tokens": 32},
}


def test_json_response_has_the_documented_shape(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json=TRANSLATE)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert body["model"] == SMOLLM2_ID and isinstance(body["created"], int)
    assert body["output_text"].strip()
    assert body["output"][0] == {"type": "output_text", "text": body["output_text"]}
    assert body["finish_reason"] in ("stop", "length")
    assert body["reasoning_text"] is None
    assert body["usage"]["input_tokens"] > 10 and 0 < body["usage"]["output_tokens"] <= 32
    assert set(body["metrics"]) == set(METRIC_KEYS)


def test_metrics_nest_and_are_filled_by_llama_cpp(client: FlaskClient) -> None:
    m = client.post("/v1/responses", json=TRANSLATE).get_json()["metrics"]
    assert m["pool_total_wall_ms"] >= m["engine_total_wall_ms"] >= m["backend_inference_wall_ms"] > 0
    for key in (
        "engine_queue_wait_ms",
        "engine_outside_backend_wall_ms",
        "engine_tokenize_ms",
        "gpu_time_to_first_token_ms",
        "gpu_generate_total_ms",
        "gpu_decode_after_first_token_ms",
        "engine_prompt_tokens",
        "engine_output_tokens",
        "engine_tokens_per_second",
    ):
        assert m[key] is not None, key
    assert m["replica"] == 0
    expected_tps = m["engine_output_tokens"] / (m["gpu_generate_total_ms"] / 1000)
    assert abs(m["engine_tokens_per_second"] - expected_tps) < 0.5


def test_greedy_decoding_is_deterministic(client: FlaskClient) -> None:
    body = {**TRANSLATE, "decoding": {"temperature": 0.0, "max_tokens": 16}}
    first = client.post("/v1/responses", json=body).get_json()["output_text"]
    second = client.post("/v1/responses", json=body).get_json()["output_text"]
    assert first == second


def test_max_tokens_caps_the_output(client: FlaskClient) -> None:
    body = {**TRANSLATE, "decoding": {"max_tokens": 3, "temperature": 0.0}}
    r = client.post("/v1/responses", json=body).get_json()
    assert r["usage"]["output_tokens"] <= 4  # re-tokenising the text may merge or split one
    assert r["finish_reason"] == "length"


def test_stop_string_ends_generation_before_it(client: FlaskClient) -> None:
    body = {
        "model": SMOLLM2_ID,
        "input": "Write a short poem about the sea.",
        "decoding": {"temperature": 0.0, "max_tokens": 40},
    }
    free = client.post("/v1/responses", json=body).get_json()["output_text"]
    # Greedy decoding repeats itself exactly, so stopping on a later word of the free run
    # must return precisely the text before that word's first occurrence.
    words = [w for w in free.split() if free.index(w) > 0]
    assert words, free
    stop = words[len(words) // 2]
    stopped = client.post(
        "/v1/responses", json={**body, "decoding": {**body["decoding"], "stop": [stop]}}
    ).get_json()
    assert stopped["output_text"] == free[: free.index(stop)]
    assert stopped["finish_reason"] == "stop"


def test_messages_use_the_gguf_chat_template(client: FlaskClient) -> None:
    body = {
        "model": SMOLLM2_ID,
        "instructions": "You are concise.",
        "messages": [
            {"role": "user", "content": "My favorite color is teal."},
            {"role": "assistant", "content": "Got it."},
            {"role": "user", "content": [{"type": "text", "text": "What is my favorite color?"}]},
        ],
        "decoding": {"temperature": 0.0, "max_tokens": 16},
    }
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 200, r.get_json()
    body_json = r.get_json()
    # The ChatML template adds role markers: the prompt is far longer than the raw text.
    assert body_json["usage"]["input_tokens"] > 30
    assert "<|im_start|>" not in body_json["output_text"]


def test_sse_stream_event_order_and_deltas(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={**TRANSLATE, "stream": True})
    assert r.status_code == 200
    assert r.mimetype == "text/event-stream"
    events = [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]
    names = [name for name, _ in events]
    assert names[0] == "response.created"
    assert names[-2:] == ["response.metrics", "response.completed"]
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert len(deltas) >= 3
    # Between them only deltas and OpenAI's item/part lifecycle events (test_responses_sdk).
    assert set(names[1:-2]) - OPENAI_LIFECYCLE == {"response.output_text.delta"}
    created, completed = events[0][1], events[-1][1]
    assert created["model"] == SMOLLM2_ID
    assert completed["id"] == created["id"]
    assert "".join(deltas) == completed["output_text"]
    assert set(events[-2][1]["metrics"]) == set(METRIC_KEYS)
    assert completed["usage"]["output_tokens"] > 0


def test_stream_failure_after_start_ends_with_response_failed(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={"model": "scripted-crash", "input": "x", "stream": True})
    assert r.status_code == 200
    events = [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]
    names = [name for name, _ in events]
    assert names[0] == "response.created"
    assert names.count("response.output_text.delta") == 3
    assert names[-1] == "response.failed"
    assert events[-1][1]["error"]["code"] == "backend_error"
    assert "crashed" in events[-1][1]["error"]["message"]


def test_json_failure_is_a_502_backend_error(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={"model": "scripted-crash", "input": "x"})
    assert r.status_code == 502
    assert r.get_json()["detail"]["code"] == "backend_error"


def test_models_lists_loaded_ids_in_both_shapes(client: FlaskClient) -> None:
    body = client.get("/v1/models").get_json()
    expected = sorted([SMOLLM2_ID, "scripted-crash", "scripted-slow"])  # scripted-idle not loaded
    assert body["object"] == "list"
    assert body["models"] == expected
    assert [{k: c[k] for k in ("id", "object", "owned_by")} for c in body["data"]] == [
        {"id": i, "object": "model", "owned_by": "llm-pool"} for i in expected
    ]
    caps = {c["id"]: c["capabilities"] for c in body["data"]}  # what each takes (issue 21)
    assert caps[SMOLLM2_ID]["structured_output"] and not caps["scripted-slow"]["structured_output"]


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["models"][SMOLLM2_ID] == "loaded"


def test_prompt_longer_than_the_context_is_a_400(client: FlaskClient) -> None:
    r = client.post("/v1/responses", json={"model": SMOLLM2_ID, "input": "word " * 1500})
    assert r.status_code == 400
    assert r.get_json()["detail"]["code"] == "invalid_request"
    assert "context window is 1024" in r.get_json()["detail"]["message"]
    # The slot was released: the model still serves.
    assert client.post("/v1/responses", json={"model": SMOLLM2_ID, "input": "hi"}).status_code == 200


def test_a_broken_stream_ends_with_response_failed(client: FlaskClient, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import llmpool.serving.responses_api as sse

    def broken(job, done):  # type: ignore[no-untyped-def]
        raise KeyError("bug")

    monkeypatch.setattr(sse, "completed_payload", broken)
    r = client.post("/v1/responses", json={**TRANSLATE, "stream": True})
    events = [e for e in sse_events(r.get_data(as_text=True)) if e[0] != "comment"]
    assert events[-1][0] == "response.failed"
    assert events[-1][1]["error"] == {"code": "internal_error", "message": "internal server error"}
