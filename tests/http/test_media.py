"""The media policy through both APIs (and the SDK's input_image parts on /v1/responses):
refusals are 403 media_forbidden / 400 invalid_request before anything is queued, and the
backend (openai_remote, in front of a real upstream on 127.0.0.1 that records what it
receives) only ever sees data URLs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.media_server import PNG, PNG_DATA_URL, ImageServer, image, redirect
from tests.runtimes.misbehaving_upstream import MisbehavingUpstream, hard_deadline

MakeClient = Callable[..., FlaskClient]


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    with hard_deadline(30):
        yield


@pytest.fixture
def upstream() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream() as server:
        yield server


@pytest.fixture
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        server.routes["/pic.png"] = image()
        yield server


@pytest.fixture
def pool_with(upstream: MisbehavingUpstream, make_app: Callable[..., Flask], tmp_path: Path) -> MakeClient:
    """pool_with(**media) -> a client; model "vision" takes images, "text" does not.
    tmp/images/pic.png and tmp/secret/key.png exist beside the settings file."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "pic.png").write_bytes(PNG)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.png").write_bytes(PNG)

    def make(**media: Any) -> FlaskClient:
        model = {
            "backend": "openai_remote",
            "remote_base_url": upstream.url,
            "remote_model": "m",
            "enabled": True,
        }
        models = {"vision": {**model, "modalities": ["text", "image"]}, "text": model}
        settings = {"media": media, "engine": {"decoding": {"max_tokens": 4}, "models": models}}
        return make_app(settings).test_client()

    return make


def picture(url: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]


def responses(client: FlaskClient, url: str, model: str = "vision") -> TestResponse:
    body = {"model": model, "input": picture(url), "allow_remote": True}
    return client.post("/v1/responses", json=body)


def responses_items(client: FlaskClient, url: str, model: str = "vision") -> TestResponse:
    """The openai SDK's form: an input item whose parts are input_text / input_image."""
    parts = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": url}]
    body = {"model": model, "input": [{"role": "user", "content": parts}], "allow_remote": True}
    return client.post("/v1/responses", json=body)


def chat(client: FlaskClient, url: str, model: str = "vision") -> TestResponse:
    body = {"model": model, "messages": [{"role": "user", "content": picture(url)}], "allow_remote": True}
    return client.post("/v1/chat/completions", json=body)


def error(r: TestResponse) -> tuple[int, str, str]:
    """(status, code, message) from either API's error body."""
    body = r.get_json()
    found = body["detail"] if "detail" in body else body["error"]
    return r.status_code, found["code"], found["message"]


def sent_urls(upstream: MisbehavingUpstream) -> list[str]:
    """Every image URL the backend sent upstream, in order."""
    return [
        part["image_url"]["url"]
        for seen in upstream.requests
        for message in (seen.body or {})["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]


REFUSED_BY_DEFAULT = [
    ("file:///etc/passwd", 403, "media_forbidden", "media.allowed_dirs is empty"),
    ("http://127.0.0.1/x.png", 403, "media_forbidden", "media.allow_http is false"),
    ("https://example.com/x.png", 403, "media_forbidden", "media.allow_http is false"),
    ("ftp://example.com/x.png", 403, "media_forbidden", "scheme 'ftp:' is not allowed"),
    ("data:image/png;base64,AAA", 400, "invalid_request", "not valid base64"),
    ("data:text/html;base64,PGI+", 400, "invalid_request", "an image/* type is required"),
]


@pytest.mark.parametrize("api", [responses, responses_items, chat])
@pytest.mark.parametrize(("url", "status", "code", "says"), REFUSED_BY_DEFAULT)
def test_the_default_policy_refuses_on_both_apis(
    pool_with: MakeClient,
    upstream: MisbehavingUpstream,
    api: Any,
    url: str,
    status: int,
    code: str,
    says: str,
) -> None:
    got = error(api(pool_with(), url))
    assert got[:2] == (status, code) and says in got[2], got
    assert upstream.requests == []  # nothing was queued, nothing reached the backend


@pytest.mark.parametrize("api", [responses, responses_items, chat])
@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("127.0.0.1", "address 127.0.0.1 is loopback"),
        ("localhost", "address 127.0.0.1 (of 'localhost') is loopback"),
        ("[::1]", "address ::1 is loopback"),
        ("2130706433", "address 127.0.0.1 is loopback"),
        ("169.254.169.254", "address 169.254.169.254 is link-local"),
    ],
)
def test_private_addresses_are_forbidden_with_allow_http(
    pool_with: MakeClient, upstream: MisbehavingUpstream, images: ImageServer, api: Any, host: str, says: str
) -> None:
    got = error(api(pool_with(allow_http=True), images.url("/pic.png", host=host)))
    assert got == (403, "media_forbidden", f"{says}; media.allow_private_http is false")
    assert images.paths == [] and upstream.requests == []


@pytest.mark.parametrize("api", [responses, responses_items, chat])
def test_file_escapes_are_forbidden(pool_with: MakeClient, tmp_path: Path, api: Any) -> None:
    (tmp_path / "images" / "escape.png").symlink_to(tmp_path / "secret" / "key.png")
    client = pool_with(allowed_dirs=["images"])  # relative to the settings file
    for path in ("/images/../secret/key.png", "/images/%2e%2e/secret/key.png", "/images/escape.png"):
        got = error(api(client, f"file://{tmp_path}{path}"))
        assert got[:2] == (403, "media_forbidden") and "outside media.allowed_dirs" in got[2], path


def test_the_backend_only_ever_sees_data_urls(
    pool_with: MakeClient, upstream: MisbehavingUpstream, images: ImageServer, tmp_path: Path
) -> None:
    images.routes["/moved"] = redirect("/pic.png")
    client = pool_with(allowed_dirs=["images"], allow_http=True, allow_private_http=True)
    urls = [f"file://{tmp_path}/images/pic.png", images.url("/pic.png"), images.url("/moved"), PNG_DATA_URL]
    for api in (responses, responses_items, chat):
        for url in urls:
            r = api(client, url)
            assert r.status_code == 200, (url, r.get_json())
    assert sent_urls(upstream) == [PNG_DATA_URL] * 3 * len(urls)


def test_a_data_url_over_the_cap_is_refused(pool_with: MakeClient, upstream: MisbehavingUpstream) -> None:
    client = pool_with(max_image_bytes=len(PNG) - 1)
    for api in (responses, responses_items, chat):
        got = error(api(client, PNG_DATA_URL))
        assert got == (
            400,
            "invalid_request",
            f"image is larger than media.max_image_bytes ({len(PNG) - 1} bytes)",
        )
    assert upstream.requests == []


def test_a_model_without_images_refuses_before_any_fetch(
    pool_with: MakeClient, upstream: MisbehavingUpstream, images: ImageServer
) -> None:
    client = pool_with(allow_http=True, allow_private_http=True)
    for api in (responses, responses_items, chat):
        got = error(api(client, images.url("/pic.png"), model="text"))
        assert got[:2] == (400, "modality_unsupported")
    assert images.paths == [] and upstream.requests == []
