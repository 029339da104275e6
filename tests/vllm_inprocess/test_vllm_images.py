"""Images through the `vllm` backend for real: a vision-language model in a gunicorn worker.

The model is the tiny randomly initialised Idefics3 that tests/runtimes/make_tiny_vlm.py
builds (`make test` passes its directory in LLM_POOL_TEST_VLM_MODEL). Its answers are
noise; what these tests check is that each image reaches the model: vLLM puts a fixed
number of image tokens into the prompt for it, so the prompt tokens the engine reports
grow by exactly that number per image, compared with the same request without images.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from PIL import Image

from tests.integration.conftest import Server, sse_events, start_server, stop_server

MODEL = "tiny-vlm"
LOAD_TIMEOUT_S = 300
pytestmark = [
    pytest.mark.filterwarnings(f"ignore::{category}:{module}")
    for category in ("DeprecationWarning", "FutureWarning", "UserWarning")
    for module in ("torch", "vllm", "transformers", "PIL")
]


def model_dir() -> Path:
    path = os.environ.get("LLM_POOL_TEST_VLM_MODEL")
    assert path and Path(path).is_dir(), "set LLM_POOL_TEST_VLM_MODEL to the tiny VLM (make test)"
    return Path(path)


def tokens_per_image() -> int:
    """What vLLM's Idefics3 processor puts in place of each `<image>` placeholder (image
    splitting off: one tile): <fake_token_around_image><global-img>, the tile's
    (image_size / patch_size)^2 / scale_factor^2 image tokens, <fake_token_around_image>."""
    config = json.loads((model_dir() / "config.json").read_text())
    vision = config["vision_config"]
    tile = (vision["image_size"] // vision["patch_size"]) ** 2 // config["scale_factor"] ** 2
    return tile + 3


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


RED = data_url(Image.new("RGB", (100, 80), (200, 30, 30)))
# A different size, mode and format: a grey gradient as a JPEG.
GRADIENT = data_url(Image.linear_gradient("L").resize((300, 200)), "JPEG")


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {
        "service": {"log_level": "info"},
        "engine": {
            "decoding": {"temperature": 0.0, "max_tokens": 8},
            "models": {
                MODEL: {
                    "backend": "vllm",
                    "vllm_model": str(model_dir()),
                    "modalities": ["text", "image"],
                    "vllm_enforce_eager": True,
                    "vllm_max_model_len": 1024,
                    "vllm_limit_mm_per_prompt": {"image": 2},
                    "target_inflight": 2,
                    "enabled": False,
                }
            },
        },
    }
    srv = start_server(tmp_path_factory.mktemp("vlm-server"), settings, timeout_s=120)
    try:
        began = time.monotonic()
        r = requests.post(f"{srv.url}/v1/admin/models/{MODEL}/load", timeout=LOAD_TIMEOUT_S)
        assert r.status_code == 200 and r.json()["state"] == "loaded", r.text
        print(f"tiny VLM load {time.monotonic() - began:.1f} s")
        tree = {p.pid for p in psutil.Process(srv.process.pid).children(recursive=True)}
        yield srv
    finally:
        code = stop_server(srv)
        print(f"server log tail:\n{srv.log()[-3000:]}")
    assert code == 0, srv.log()[-3000:]
    assert "closing a runtime" not in srv.log(), srv.log()[-3000:]  # it closed cleanly
    left = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not left, f"processes outlived the pool: {left}"


def respond(srv: Server, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{srv.url}/v1/responses", json={"model": MODEL, **body}, timeout=120)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    # The pool's metric and the API's usage both carry what the engine counted.
    assert out["metrics"]["engine_prompt_tokens"] == out["usage"]["input_tokens"]
    return out


def prompt_tokens(srv: Server, body: dict[str, Any]) -> int:
    tokens: int = respond(srv, body)["usage"]["input_tokens"]
    return tokens


def test_the_model_offers_images(server: Server) -> None:
    row = requests.get(f"{server.url}/v1/admin/models/{MODEL}", timeout=5).json()
    assert row["capabilities"]["modalities"] == ["text", "image"]


def test_an_image_adds_its_tokens_to_the_prompt(server: Server) -> None:
    question = "What is in this picture?"
    without = prompt_tokens(server, {"input": question})
    with_image = prompt_tokens(server, {"input": [image(RED), text(question)]})
    print(f"prompt tokens: {without} without the image, {with_image} with it")
    assert with_image - without == tokens_per_image()
    # Any size and format makes one tile, and the text after the image counts too.
    assert prompt_tokens(server, {"input": [image(GRADIENT), text(question)]}) == with_image
    assert prompt_tokens(server, {"input": [image(GRADIENT), text(question + " Be brief.")]}) > with_image


def test_the_sdks_input_image_part_is_the_same_image(server: Server) -> None:
    """OpenAI's Responses input item with input_text/input_image parts (what the official
    SDK sends) reaches the engine as the pool's own image_url content does (issue 14)."""
    question = "What is in this picture?"
    native = prompt_tokens(server, {"input": [image(RED), text(question)]})
    parts = [{"type": "input_image", "image_url": RED}, {"type": "input_text", "text": question}]
    assert prompt_tokens(server, {"input": [{"role": "user", "content": parts}]}) == native


def test_two_images_over_two_turns(server: Server) -> None:
    def conversation(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "messages": [
                {"role": "user", "content": [*first, text("What colour is this?")]},
                {"role": "assistant", "content": "Red."},
                {"role": "user", "content": [*second, text("And this one?")]},
            ]
        }

    without = prompt_tokens(server, conversation([], []))
    one = prompt_tokens(server, conversation([image(RED)], []))
    two = prompt_tokens(server, conversation([image(RED)], [image(GRADIENT)]))
    print(f"prompt tokens over two turns: {without} without images, {one} with one, {two} with two")
    assert one - without == tokens_per_image()
    assert two - without == 2 * tokens_per_image()


def test_a_streamed_answer_counts_the_image_too(server: Server) -> None:
    body = {"model": MODEL, "input": [image(GRADIENT), text("Describe it.")]}
    events = sse_events(server.url, body)
    assert events[-1][0] == "response.completed"
    plain = prompt_tokens(server, {"input": "Describe it."})
    assert events[-1][1]["usage"]["input_tokens"] - plain == tokens_per_image()


def test_an_image_the_model_cannot_take_is_a_400(server: Server) -> None:
    url = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    r = requests.post(
        f"{server.url}/v1/responses", json={"model": MODEL, "input": [image(url), text("hi")]}, timeout=60
    )
    assert r.status_code == 400, r.text
    assert r.json()["detail"]["code"] == "invalid_request" and "not an image" in r.json()["detail"]["message"]


def test_an_image_url_the_media_policy_refuses_never_reaches_the_engine(server: Server) -> None:
    r = requests.post(
        f"{server.url}/v1/responses",
        json={"model": MODEL, "input": [image("https://example.com/cat.png"), text("hi")]},
        timeout=60,
    )
    assert r.status_code == 403, r.text
    assert (
        r.json()["detail"]["code"] == "media_forbidden"
        and "media.allow_http" in r.json()["detail"]["message"]
    )


def test_more_images_than_the_model_allows_is_a_400(server: Server) -> None:
    r = requests.post(
        f"{server.url}/v1/responses",
        json={"model": MODEL, "input": [image(RED), image(RED), image(GRADIENT), text("hi")]},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert "At most 2 image(s)" in r.json()["detail"]["message"]
    # ... and the engine goes on serving.
    assert respond(server, {"input": [image(RED), text("hi")]})["usage"]["input_tokens"] > tokens_per_image()


def test_images_that_push_the_prompt_past_the_context_are_a_400(server: Server) -> None:
    # vllm_max_model_len is 1024: the text alone fits, with two images it does not.
    words = "hello " * 900
    alone = prompt_tokens(server, {"input": words})
    assert alone + 2 * tokens_per_image() > 1024 > alone
    r = requests.post(
        f"{server.url}/v1/responses",
        json={"model": MODEL, "input": [image(RED), image(GRADIENT), text(words)]},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert "maximum model length" in r.json()["detail"]["message"]
