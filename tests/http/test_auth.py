"""Bearer-token auth (SPEC §8, issue 11): every route against every kind of credential.

The pool is configured with an admin token and two user keys; each route is called with
no header, a wrong token, the right token one character off, Basic auth, a user key and
the admin token. Admin routes take the admin token only; public routes take a user key
or the admin token; the probes take anything.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from blueprints import create_app
from llmpool.config.loader import load_settings
from llmpool.errors import ConfigError
from tests.fakes import scripted_model

ADMIN = "adm-7f3c2e9a1b4d"
USER = "usr-0a1b2c3d4e5f"
USER2 = "usr-ffeeddccbbaa"
MODEL = "scripted"


def auth_settings(**service: Any) -> dict[str, Any]:
    return {
        "service": {"admin_token_env": "TEST_POOL_ADMIN", "api_keys_env": "TEST_POOL_KEYS", **service},
        "engine": {"models": {MODEL: scripted_model(scripted_tokens=3, scripted_delay_s=0.0)}},
    }


@pytest.fixture
def secured(make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    monkeypatch.setenv("TEST_POOL_ADMIN", ADMIN)
    monkeypatch.setenv("TEST_POOL_KEYS", f"{USER}, {USER2}")
    return make_app(auth_settings()).test_client()


def off_by_one(token: str) -> str:
    return token[:-1] + ("0" if token[-1] != "0" else "1")


CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "wrong": {"Authorization": "Bearer not-a-token"},
    "admin-off-by-one": {"Authorization": f"Bearer {off_by_one(ADMIN)}"},
    "user-off-by-one": {"Authorization": f"Bearer {off_by_one(USER)}"},
    "admin-prefix": {"Authorization": f"Bearer {ADMIN[:-1]}"},
    "basic": {"Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN}".encode()).decode()},
    "bare-token": {"Authorization": ADMIN},
    "empty-bearer": {"Authorization": "Bearer "},
    "user": {"Authorization": f"Bearer {USER}"},
    "user2": {"Authorization": f"bearer {USER2}"},  # the scheme is case-insensitive
    "admin": {"Authorization": f"Bearer {ADMIN}"},
    # Anthropic's clients send the key as x-api-key: the same keys, on every route.
    "x-api-key-user": {"x-api-key": USER},
    "x-api-key-admin": {"x-api-key": ADMIN},
    "x-api-key-wrong": {"x-api-key": "not-a-token"},
    "x-api-key-and-bearer-same": {"x-api-key": USER, "Authorization": f"Bearer {USER}"},
    "x-api-key-and-bearer-differ": {"x-api-key": USER2, "Authorization": f"Bearer {USER}"},
    "x-api-key-wrong-beside-bearer": {"x-api-key": "not-a-token", "Authorization": f"Bearer {ADMIN}"},
}
ADMIN_OK = {"admin", "x-api-key-admin"}
PUBLIC_OK = {"user", "user2", "admin", "x-api-key-user", "x-api-key-admin", "x-api-key-and-bearer-same"}

GENERATE = {"model": MODEL, "input": "hi"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {**CHAT, "max_tokens": 8}
# (method, path, json body, who may call it)
ROUTES: list[tuple[str, str, Any, set[str] | None]] = [
    ("GET", "/v1/admin/models", None, ADMIN_OK),
    ("GET", f"/v1/admin/models/{MODEL}", None, ADMIN_OK),
    ("GET", f"/v1/admin/models/{MODEL}/logs", None, ADMIN_OK),
    ("POST", f"/v1/admin/models/{MODEL}/load", None, ADMIN_OK),
    ("POST", f"/v1/admin/models/{MODEL}/unload", None, ADMIN_OK),
    ("GET", "/v1/admin/gpu-memory", None, ADMIN_OK),
    ("GET", "/v1/admin/no-such-route", None, ADMIN_OK),
    ("POST", "/v1/responses", GENERATE, PUBLIC_OK),
    ("POST", "/v1/chat/completions", CHAT, PUBLIC_OK),
    ("POST", "/v1/messages", MESSAGE, PUBLIC_OK),
    ("POST", "/v1/messages/count_tokens", CHAT, PUBLIC_OK),
    ("GET", "/v1/models", None, PUBLIC_OK),
    # vLLM's router polls these and sends no key (blueprints.router): open, like the probes.
    ("GET", "/get_load", None, None),
    ("GET", "/health", None, None),
    ("GET", "/v1/no-such-route", None, PUBLIC_OK),
    ("GET", "/healthz", None, None),
    ("GET", "/readyz", None, None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
def test_auth_matrix(
    secured: FlaskClient, method: str, path: str, body: Any, allowed: set[str] | None
) -> None:
    for name, headers in CREDENTIALS.items():
        r = secured.open(path, method=method, json=body, headers=headers)
        if allowed is None or name in allowed:
            assert r.status_code != 401, (name, r.get_json())
            continue
        assert r.status_code == 401, (name, r.status_code, r.get_data(as_text=True))
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        text = r.get_data(as_text=True)
        assert ADMIN not in text and USER not in text and ADMIN[:-1] not in text
        body_json = r.get_json()
        if path.startswith("/v1/chat/"):
            error = body_json["error"]  # OpenAI's shape, which its SDK reads
            assert error["code"] == "unauthorized" and error["type"] == "authentication_error"
        elif path.startswith("/v1/messages"):
            assert body_json["type"] == "error"  # Anthropic's shape, which its SDK reads
            assert body_json["error"]["type"] == "authentication_error"
        else:
            assert body_json["detail"]["code"] == "unauthorized"


def test_allowed_credentials_really_serve(secured: FlaskClient) -> None:
    user = CREDENTIALS["user"]
    r = secured.post("/v1/responses", json=GENERATE, headers=user)
    assert r.status_code == 200 and r.get_json()["output_text"]
    r = secured.post("/v1/chat/completions", json=CHAT, headers=CREDENTIALS["user2"])
    assert r.status_code == 200 and r.get_json()["choices"][0]["message"]["content"]
    r = secured.get("/v1/admin/models", headers=CREDENTIALS["admin"])
    assert r.status_code == 200 and r.get_json()["models"][0]["name"] == MODEL


def test_a_stream_needs_a_key_too(secured: FlaskClient) -> None:
    r = secured.post("/v1/responses", json={**GENERATE, "stream": True})
    assert r.status_code == 401 and r.get_json()["detail"]["code"] == "unauthorized"
    r = secured.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"


def test_only_admin_configured_leaves_the_public_api_open(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_POOL_ADMIN", ADMIN)
    settings = auth_settings()
    del settings["service"]["api_keys_env"]
    client = make_app(settings).test_client()
    assert client.post("/v1/responses", json=GENERATE).status_code == 200
    assert client.get("/v1/admin/models").status_code == 401
    assert client.get("/v1/admin/models", headers=CREDENTIALS["user"]).status_code == 401


def test_only_keys_configured_leaves_the_admin_api_open(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_POOL_KEYS", USER)
    settings = auth_settings()
    del settings["service"]["admin_token_env"]
    client = make_app(settings).test_client()
    assert client.get("/v1/admin/models").status_code == 200
    assert client.post("/v1/responses", json=GENERATE).status_code == 401
    assert client.post("/v1/responses", json=GENERATE, headers=CREDENTIALS["user"]).status_code == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "TEST_POOL_ADMIN, which is not set"),
        ({"TEST_POOL_ADMIN": ""}, "TEST_POOL_ADMIN, which is empty"),
        ({"TEST_POOL_ADMIN": "   "}, "TEST_POOL_ADMIN, which is empty"),
        ({"TEST_POOL_ADMIN": ADMIN, "TEST_POOL_KEYS": ""}, "TEST_POOL_KEYS, which is empty"),
        ({"TEST_POOL_ADMIN": ADMIN, "TEST_POOL_KEYS": f"{USER},,{USER2}"}, "has an empty key"),
        ({"TEST_POOL_ADMIN": ADMIN, "TEST_POOL_KEYS": f"{USER},"}, "has an empty key"),
    ],
)
def test_a_named_secret_that_is_missing_stops_start_up(
    write_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    monkeypatch.delenv("TEST_POOL_ADMIN", raising=False)
    monkeypatch.setenv("TEST_POOL_KEYS", USER)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    write_settings(auth_settings())
    with pytest.raises(ConfigError) as info:
        create_app(load_settings(), start_models=False)
    assert message in info.value.message
    assert ADMIN not in info.value.message and USER not in info.value.message


def test_a_secret_pasted_as_the_variable_name_is_refused_without_echo(
    write_settings: Callable[..., Any],
) -> None:
    write_settings(auth_settings(admin_token_env="sk-live 1234/abcd"))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "service.admin_token_env" in info.value.message
    assert "sk-live" not in info.value.message


def test_tokens_never_reach_the_log(secured: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for headers in CREDENTIALS.values():
        secured.post("/v1/responses", json=GENERATE, headers=headers)
        secured.get("/v1/admin/models", headers=headers)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (ADMIN, USER, USER2, off_by_one(ADMIN)):
        assert secret not in logged


def test_admin_rows_never_show_service_secrets(secured: FlaskClient) -> None:
    text = secured.get("/v1/admin/models", headers=CREDENTIALS["admin"]).get_data(as_text=True)
    assert ADMIN not in text and USER not in text
