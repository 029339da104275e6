"""Flask test-client fixtures: the real SmolLM2 GGUF plus scripted models for edge cases."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient

from blueprints import create_app
from llmpool.config.loader import load_settings
from llmpool.pool import Pool
from tests.conftest import SMOLLM2_ID, SMOLLM2_REF
from tests.fakes import scripted_model


def base_settings() -> dict[str, Any]:
    return {
        "engine": {
            "decoding": {"temperature": 0.0, "max_tokens": 24},
            "models": {
                SMOLLM2_ID: {
                    "backend": "llama_cpp",
                    "model_path": SMOLLM2_REF,
                    "gguf_n_ctx": 1024,
                    "enabled": True,
                },
                "scripted-slow": scripted_model(
                    scripted_tokens=400, scripted_delay_s=0.01, max_queue=1, target_inflight=1
                ),
                "scripted-crash": scripted_model(scripted_tokens=10, scripted_fail_after=3),
                "scripted-idle": scripted_model(enabled=False, replica_max=2),
            },
        }
    }


@pytest.fixture
def make_app(write_settings: Callable[..., Path], smollm2_path: str) -> Iterator[Callable[..., Flask]]:
    pools: list[Pool] = []

    def make(settings: dict[str, Any] | None = None) -> Flask:
        write_settings(settings or base_settings())
        pool = Pool(load_settings())
        pool.start()  # synchronous here: tests start with every enabled model loaded
        pools.append(pool)
        return create_app(pool.settings, pool=pool, start_models=False)

    yield make
    for pool in pools:
        pool.shutdown()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def sse_events(body: str) -> list[tuple[str, Any]]:
    """Parse an SSE body into (event, data) pairs; comment lines become ("comment", text)."""
    events: list[tuple[str, Any]] = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        if block.startswith(":"):
            events.append(("comment", block[1:].strip()))
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


@contextlib.contextmanager
def openai_sdk(app: Flask) -> Iterator[openai.OpenAI]:
    """The official `openai` client on `app` in-process (its HTTP client on a WSGI
    transport), without retries."""
    http = httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://pool")
    with openai.OpenAI(base_url="http://pool/v1", api_key="unused", http_client=http, max_retries=0) as c:
        yield c


@contextlib.contextmanager
def anthropic_sdk(app: Flask) -> Iterator[anthropic.Anthropic]:
    """The official `anthropic` client on `app`, likewise."""
    http = httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://pool")
    with anthropic.Anthropic(base_url="http://pool", api_key="unused", http_client=http, max_retries=0) as c:
        yield c
