"""llmpool.auth (bearer parsing, constant-time checks) and llmpool.secrets (redaction)."""

from __future__ import annotations

import pytest

from llmpool.auth import Access, Credentials, bearer_token, credentials_from
from llmpool.config.spec import ServiceSettings
from llmpool.errors import ConfigError, Unauthorized
from llmpool.secrets import is_secret_key, redact, redact_argv, scrub, secret_values


# -- auth ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
        ("tok", None),
        ("Bearer tok", "tok"),
        ("bearer tok", "tok"),
        ("BEARER  tok ", "tok"),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def service(admin: str | None = "A", keys: str | None = "K") -> ServiceSettings:
    return ServiceSettings(
        host="127.0.0.1",
        port=8010,
        log_level="info",
        admin_token_env=admin,
        api_keys_env=keys,
        max_body_mb=32,
        log_prompts=False,
    )


def creds() -> Credentials:
    return credentials_from(service(), {"A": "admin-tok", "K": "k1, k2 ,k3"})


def test_admin_access_takes_the_admin_token_only() -> None:
    c = creds()
    c.check(Access.ADMIN, "Bearer admin-tok")
    for wrong in (None, "Bearer k1", "Bearer admin-to", "Bearer admin-tokk", "Basic admin-tok"):
        with pytest.raises(Unauthorized):
            c.check(Access.ADMIN, wrong)


def test_public_access_takes_any_key_or_the_admin_token() -> None:
    c = creds()
    for good in ("Bearer k1", "Bearer k2", "Bearer k3", "Bearer admin-tok"):
        c.check(Access.PUBLIC, good)
    for wrong in (None, "Bearer k4", "Bearer k1,k2", "Bearer  "):
        with pytest.raises(Unauthorized):
            c.check(Access.PUBLIC, wrong)


def test_open_access_and_unset_settings_need_nothing() -> None:
    creds().check(Access.OPEN, None)
    none = credentials_from(service(None, None), {})
    none.check(Access.ADMIN, None)
    none.check(Access.PUBLIC, "Bearer anything")


def test_unauthorized_carries_the_bearer_challenge() -> None:
    with pytest.raises(Unauthorized) as info:
        creds().check(Access.ADMIN, "Bearer nope")
    assert info.value.status == 401 and info.value.code == "unauthorized"
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert "nope" not in info.value.message


def test_credentials_repr_shows_no_secret() -> None:
    text = repr(creds()) + str(creds())
    assert "admin-tok" not in text and "k1" not in text
    assert "3 key(s)" in text


@pytest.mark.parametrize(
    "environ", [{}, {"A": ""}, {"A": " \t"}, {"A": "x", "K": ""}, {"A": "x", "K": "a,,b"}]
)
def test_a_named_variable_that_is_unset_or_empty_fails_closed(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        credentials_from(service(), environ)


# -- secrets ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("remote_api_key", True),
        ("vllm_serve_api_key", True),
        ("hf_token", True),
        ("db_password", True),
        ("client_secret", True),
        ("remote_headers", True),
        ("Authorization", True),
        ("remote_api_key_env", False),  # the variable's name, validated as a name
        ("api_keys_env", False),
        ("max_tokens", False),
        ("llama_server_image_max_tokens", False),
        ("vllm_tokenizer", False),
        ("backend", False),
    ],
)
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_redact_masks_secrets_keeps_header_names_and_masks_argv() -> None:
    definition = {
        "backend": "openai_remote",
        "remote_api_key_env": "OPENAI_API_KEY",
        "remote_headers": {"X-Org": "org-123", "Authorization": "Bearer sk-1"},
        "nested": {"hf_token": "hf_abc", "keep": 1, "unset_token": None},
        "llama_server_extra_args": ["--api-key", "sk-secret", "--threads", "2", "--hf-token=hf_x"],
        "modalities": ["text", "image"],
    }
    assert redact(definition) == {
        "backend": "openai_remote",
        "remote_api_key_env": "OPENAI_API_KEY",
        "remote_headers": {"X-Org": "***", "Authorization": "***"},
        "nested": {"hf_token": "***", "keep": 1, "unset_token": None},
        "llama_server_extra_args": ["--api-key", "***", "--threads", "2", "--hf-token=***"],
        "modalities": ["text", "image"],
    }
    assert definition["remote_headers"]["X-Org"] == "org-123"  # the input is not modified


def test_redact_argv_and_scrub_child_output() -> None:
    argv = ["llama-server", "-m", "m.gguf", "--api-key", "sk-abcdef", "--port", "9"]
    assert redact_argv(argv) == ["llama-server", "-m", "m.gguf", "--api-key", "***", "--port", "9"]
    secrets = secret_values({"remote_headers": {"X": "hdr-value"}, "hf_token": "hf_zzz1"}, argv)
    assert set(secrets) == {"sk-abcdef", "hdr-value", "hf_zzz1"}
    line = "main: api key sk-abcdef, header hdr-value, token hf_zzz1"
    assert scrub(line, secrets) == "main: api key ***, header ***, token ***"
