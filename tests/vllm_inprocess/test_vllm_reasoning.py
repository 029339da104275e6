"""Reasoning on the in-process `vllm` backend, for real: the HF copy of SmolLM2 with its
stock template (the model writes `<think>` inline) and the think-template copy
(tests/runtimes/make_think_models.sh, in LLM_POOL_TEST_THINK_HF: the prompt opens
`<think>`, enable_thinking=false closes an empty block), both as `qwen3_template`, under
gunicorn. The checks are tests/integration/test_reasoning.py's (FEW_SHOT, why it works).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Server, start_server, stop_server
from tests.integration.test_reasoning import check_disabled, check_split

pytestmark = [
    pytest.mark.filterwarnings(f"ignore::{category}:{module}")
    for category in ("DeprecationWarning", "FutureWarning", "UserWarning")
    for module in ("torch", "vllm", "transformers")
]


def model_dirs() -> tuple[str, str]:
    stock = os.environ.get("LLM_POOL_TEST_VLLM_MODEL") or ""
    think = os.environ.get("LLM_POOL_TEST_THINK_HF") or ""
    assert Path(stock).is_dir(), "set LLM_POOL_TEST_VLLM_MODEL to the HF copy (make test)"
    assert (Path(think) / "chat_template.jinja").is_file(), (
        "set LLM_POOL_TEST_THINK_HF to the think-template HF copy (make test builds it)"
    )
    return stock, think


def model(path: str) -> dict[str, Any]:
    return {
        "backend": "vllm",
        "vllm_model": path,
        "vllm_enforce_eager": True,
        "vllm_max_model_len": 1024,
        "prompt_format": "qwen3_template",
        "enable_thinking": True,
        "enabled": True,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    stock, think = model_dirs()
    settings = {
        "service": {"log_level": "warning"},
        "engine": {
            "decoding": {"temperature": 0.0, "max_tokens": 24},
            "models": {"vllm-inline": model(stock), "vllm-forced": model(think)},
        },
    }
    srv = start_server(tmp_path_factory.mktemp("vllm-reasoning"), settings, timeout_s=600)
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.mark.parametrize("name", ["vllm-inline", "vllm-forced"])
def test_thoughts_go_to_reasoning_never_to_the_answer(server: Server, name: str) -> None:
    check_split(server.url, name)


# The stock template has no thinking switch (see test_reasoning.py); the pool adds Qwen3's
# empty block to the prompt it renders, so both models can turn thinking off.
@pytest.mark.parametrize("name", ["vllm-inline", "vllm-forced"])
def test_thinking_disabled_produces_no_reasoning(server: Server, name: str) -> None:
    check_disabled(server.url, name)
