"""openai_remote at the adapter level: settings keys, the request body, the error table,
retry and backoff rules, keep-alive, the /models health check and close().

Generation runs against a real HTTP server on 127.0.0.1 (tests/runtimes/
misbehaving_upstream.py); the HTTP-level behaviour is in tests/http/test_openai_remote.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from llmpool.backends import registry
from llmpool.backends.openai_chat import UpstreamFailure
from llmpool.backends.openai_remote import (
    BACKOFF_CAP_S,
    OpenAIRemoteAdapter,
    backoff_delay,
    retryable,
    upstream_error,
)
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec
from llmpool.errors import ConfigError, ModelLoadFailed, PoolError
from llmpool.generation import Chunk, Decoding, GenerationRequest, Message
from tests.runtimes.misbehaving_upstream import MisbehavingUpstream, Reply

KEY = "sk-unit-secret-0123456789"
KEY_ENV = "LLM_POOL_TEST_REMOTE_KEY"
MakeSpec = Callable[..., ModelSpec]


@pytest.fixture
def upstream() -> Iterator[MisbehavingUpstream]:
    with MisbehavingUpstream(api_key=KEY) as server:
        yield server


@pytest.fixture
def make_spec(write_settings: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> MakeSpec:
    """make_spec(upstream=None, common=None, **remote_keys) -> validated spec of model "m"."""
    monkeypatch.setenv(KEY_ENV, KEY)

    def make(
        upstream: MisbehavingUpstream | None = None, common: dict[str, Any] | None = None, **keys: Any
    ) -> ModelSpec:
        model = {
            "backend": "openai_remote",
            "remote_base_url": upstream.url if upstream else "https://api.example.com/v1",
            "remote_model": "remote-model",
            "remote_api_key_env": KEY_ENV,
            "remote_timeout_s": 2,
            **(common or {}),
            **{f"remote_{k}": v for k, v in keys.items()},
        }
        write_settings({"engine": {"models": {"m": model}}})
        return load_settings().models["m"]

    return make


@pytest.fixture
def adapters() -> Iterator[list[OpenAIRemoteAdapter]]:
    """Adapters made by a test, closed after it (their sessions hold sockets)."""
    made: list[OpenAIRemoteAdapter] = []
    yield made
    for adapter in made:
        adapter.close()


def loaded(spec: ModelSpec, adapters: list[OpenAIRemoteAdapter]) -> OpenAIRemoteAdapter:
    adapter = OpenAIRemoteAdapter(spec, 0)
    adapters.append(adapter)
    adapter.load()
    return adapter


def run(adapter: OpenAIRemoteAdapter, request: GenerationRequest | None = None) -> list[Chunk]:
    return list(adapter.generate(request or GenerationRequest(input="hi")))


def config_error(write_settings: Callable[..., Path], **keys: Any) -> str:
    model = {"backend": "openai_remote", "remote_base_url": "https://api.example.com/v1", "remote_model": "x"}
    write_settings({"engine": {"models": {"m": {**model, **keys}}}})
    with pytest.raises(ConfigError) as info:
        load_settings()
    return info.value.message


# -- settings --------------------------------------------------------------------------
def test_registered_as_a_remote_non_blocking_batching_backend() -> None:
    assert registry.get("openai_remote") is OpenAIRemoteAdapter
    assert (
        OpenAIRemoteAdapter.is_remote and not OpenAIRemoteAdapter.blocking and OpenAIRemoteAdapter.can_batch
    )


def test_defaults_of_the_remote_keys(make_spec: MakeSpec) -> None:
    options = dict(make_spec().options)
    assert options == {
        "remote_api_kind": "chat_completions",
        "remote_base_url": "https://api.example.com/v1",
        "remote_api_key_env": KEY_ENV,
        "remote_model": "remote-model",
        "remote_timeout_s": 2,
        "remote_health_check": "config_only",
        "remote_max_retries": 0,
        "remote_thinking": None,
        "remote_headers": {},
    }


@pytest.mark.parametrize(
    ("keys", "where", "says"),
    [
        ({"remote_base_url": None}, "remote_base_url", "null"),
        ({"remote_base_url": "ftp://example.com/v1"}, "remote_base_url", "URL"),
        ({"remote_base_url": "not a url"}, "remote_base_url", "URL"),
        ({"remote_api_kind": "responses"}, "remote_api_kind", "one of"),
        ({"remote_timeout_s": "30"}, "remote_timeout_s", "number"),
        ({"remote_timeout_s": 0}, "remote_timeout_s", "greater than 0"),
        ({"remote_max_retries": 11}, "remote_max_retries", "less than or equal to 10"),
        ({"remote_max_retries": True}, "remote_max_retries", "integer"),
        ({"remote_health_check": "ping"}, "remote_health_check", "one of"),
        ({"remote_thinking": "maybe"}, "remote_thinking", "one of"),
        ({"remote_headers": {"X-A": 1}}, "remote_headers", "string"),
        ({"remote_api_key": "sk-inline"}, "remote_api_key", "Unknown field"),
        ({"remote_api_key_env": "sk-pasted-key"}, "remote_api_key_env", "environment variable name"),
        ({"remote_api_key_env": ""}, "remote_api_key_env", "environment variable name"),
    ],
)
def test_bad_remote_keys_fail_naming_the_key(
    write_settings: Callable[..., Path], keys: dict[str, Any], where: str, says: str
) -> None:
    message = config_error(write_settings, **keys)
    assert f"engine.models.m.{where}" in message and says in message, message
    assert "sk-pasted-key" not in message and "sk-inline" not in message  # never echoed


def test_base_url_and_model_are_required(write_settings: Callable[..., Path]) -> None:
    write_settings({"engine": {"models": {"m": {"backend": "openai_remote"}}}})
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "m.remote_base_url: Missing data" in info.value.message
    assert "m.remote_model: Missing data" in info.value.message


def test_capabilities_follow_the_spec(make_spec: MakeSpec) -> None:
    caps = OpenAIRemoteAdapter.capabilities(make_spec(common={"modalities": ["text", "image"]}))
    assert caps.modalities == ("text", "image") and caps.multi_turn and caps.thinking_modes == ("default",)
    assert OpenAIRemoteAdapter.capabilities(make_spec(thinking="disabled")).thinking_modes == (
        "default",
        "enabled",
        "disabled",
    )
    assert OpenAIRemoteAdapter.max_tokens_limit(make_spec()) is None  # the upstream enforces its own


# -- the request body --------------------------------------------------------------------
def test_payload_maps_the_chat_completions_decoding_fields_only(make_spec: MakeSpec) -> None:
    request = GenerationRequest(
        messages=(Message("user", "a"), Message("assistant", "b"), Message("user", "c")),
        instructions="be brief",
        decoding=Decoding(
            beam_size=2,
            top_k=5,
            top_p=0.9,
            temperature=0.3,
            repetition_penalty=1.3,
            max_tokens=7,
            stop=("x",),
            seed=4,
        ),
    )
    assert OpenAIRemoteAdapter(make_spec(), 0).payload(request) == {
        "model": "remote-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
        "max_tokens": 7,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["x"],
        "seed": 4,
    }
    no_stop = OpenAIRemoteAdapter(make_spec(), 0).payload(GenerationRequest(input="x"))
    assert "stop" not in no_stop  # an empty list is refused by some providers
    assert "seed" not in no_stop


@pytest.mark.parametrize(
    ("configured", "requested", "sent"),
    [
        (None, "default", None),
        ("default", "default", None),
        ("enabled", "default", {"enable_thinking": True}),
        ("disabled", "default", {"enable_thinking": False}),
        ("disabled", "enabled", {"enable_thinking": True}),
        ("enabled", "disabled", {"enable_thinking": False}),
    ],
)
def test_remote_thinking_becomes_chat_template_kwargs(
    make_spec: MakeSpec, configured: str | None, requested: str, sent: dict[str, bool] | None
) -> None:
    payload = OpenAIRemoteAdapter(make_spec(thinking=configured), 0).payload(
        GenerationRequest(input="x", thinking=requested)
    )
    assert payload.get("chat_template_kwargs") == sent


# -- the error table -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "status", "code", "http"),
    [
        ("status", 401, "upstream_authentication", 502),
        ("status", 403, "upstream_authentication", 502),
        ("status", 429, "upstream_rate_limit", 429),
        ("status", 400, "upstream_invalid_request", 502),
        ("status", 404, "upstream_invalid_request", 502),
        ("status", 413, "upstream_invalid_request", 502),
        ("status", 422, "upstream_invalid_request", 502),
        ("status", 500, "upstream_server_error", 502),
        ("status", 503, "upstream_server_error", 502),
        ("status", None, "upstream_server_error", 502),  # an error event inside the stream
        ("timeout", None, "upstream_timeout", 504),
        ("connection", None, "upstream_connection", 502),
        ("truncated", None, "upstream_connection", 502),
        ("parse", None, "upstream_parse", 502),
    ],
)
def test_upstream_failures_map_to_upstream_codes(kind: str, status: int | None, code: str, http: int) -> None:
    error = upstream_error(UpstreamFailure(kind, "what happened", status=status), "m")
    assert isinstance(error, PoolError)
    assert (error.code, error.status, error.message, error.model) == (code, http, "what happened", "m")


def test_rate_limit_passes_retry_after_or_says_one_second() -> None:
    sent = upstream_error(UpstreamFailure("status", "x", status=429, retry_after="17"), "m")
    assert sent.headers == {"Retry-After": "17"}
    assert upstream_error(UpstreamFailure("status", "x", status=429), "m").headers == {"Retry-After": "1"}


def test_the_key_is_scrubbed_from_upstream_messages() -> None:
    error = upstream_error(UpstreamFailure("status", f"bad key {KEY}!", status=401), "m", KEY)
    assert error.message == "bad key ***!"


@pytest.mark.parametrize(
    ("failure", "retry"),
    [
        (UpstreamFailure("connection", "x"), True),
        (UpstreamFailure("status", "x", status=429), True),
        (UpstreamFailure("status", "x", status=500), True),
        (UpstreamFailure("status", "x", status=502), True),
        (UpstreamFailure("connection", "x", output_started=True), False),
        (UpstreamFailure("status", "x", status=500, output_started=True), False),
        (UpstreamFailure("status", "x", status=400), False),
        (UpstreamFailure("status", "x", status=401), False),
        (UpstreamFailure("status", "x", status=None), False),
        (UpstreamFailure("timeout", "x"), False),
        (UpstreamFailure("parse", "x"), False),
        (UpstreamFailure("truncated", "x"), False),
    ],
)
def test_only_connection_429_and_5xx_before_output_are_retried(failure: UpstreamFailure, retry: bool) -> None:
    assert retryable(failure) is retry


def test_backoff_is_jittered_exponential_and_capped() -> None:
    first = [backoff_delay(1) for _ in range(200)]
    assert all(0.1 <= d <= 0.2 for d in first) and len(set(first)) > 1
    assert all(0.2 <= backoff_delay(2) <= 0.4 for _ in range(50))
    assert all(BACKOFF_CAP_S / 2 <= backoff_delay(20) <= BACKOFF_CAP_S for _ in range(50))
    assert backoff_delay(1, "2") == 2.0  # the upstream's Retry-After, as a minimum
    assert backoff_delay(1, "3600") == BACKOFF_CAP_S
    assert backoff_delay(1, "Wed, 21 Oct 2015 07:28:00 GMT") <= 0.2


# -- against a real upstream -----------------------------------------------------------
def test_generate_streams_one_chunk_per_upstream_delta(
    make_spec: MakeSpec, upstream: MisbehavingUpstream, adapters: list[OpenAIRemoteAdapter]
) -> None:
    upstream.script(Reply(tokens=("a", "b", "c"), reasoning=("hmm",), finish_reason="length"))
    chunks = run(loaded(make_spec(upstream), adapters))
    assert [(c.text, c.reasoning) for c in chunks[:-1]] == [("", "hmm"), ("a", ""), ("b", ""), ("c", "")]
    final = chunks[-1].final
    assert final is not None and final.finish_reason == "length" and final.output_tokens == 3
    seen = upstream.requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == f"Bearer {KEY}"  # read from the env var at load
    assert seen.body is not None and seen.body["stream"] is True and seen.body["model"] == "remote-model"


def test_tokens_arrive_as_sent_even_a_surrogate_pair_cut_in_two(
    make_spec: MakeSpec, upstream: MisbehavingUpstream, adapters: list[OpenAIRemoteAdapter]
) -> None:
    # The upstream's events are parsed with orjson, which refuses a lone surrogate escape
    # (a server that cut an emoji between two tokens sends one); those go to `json`.
    tokens = ("é", "中文", "\ud83d", "\ude42", ' "q"')
    upstream.script(Reply(tokens=tokens))
    chunks = run(loaded(make_spec(upstream), adapters))
    assert tuple(c.text for c in chunks[:-1]) == tokens


def test_key_is_read_at_load_not_per_request(
    make_spec: MakeSpec,
    upstream: MisbehavingUpstream,
    adapters: list[OpenAIRemoteAdapter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = loaded(make_spec(upstream), adapters)
    monkeypatch.setenv(KEY_ENV, "sk-changed-later")
    run(adapter)
    assert upstream.requests[0].headers["Authorization"] == f"Bearer {KEY}"


def test_no_key_env_sends_no_authorization_and_extra_headers_go_along(
    make_spec: MakeSpec, adapters: list[OpenAIRemoteAdapter]
) -> None:
    with MisbehavingUpstream() as open_upstream:
        spec = make_spec(open_upstream, api_key_env=None, headers={"X-Tenant": "t1"})
        run(loaded(spec, adapters))
        headers = open_upstream.requests[0].headers
    assert "Authorization" not in headers and headers["X-Tenant"] == "t1"


def test_proxy_and_ca_bundle_from_the_environment_are_read_once_at_load(
    make_spec: MakeSpec, adapters: list[OpenAIRemoteAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp-bundle.pem")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    adapter = loaded(make_spec(), adapters)  # https://api.example.com/v1
    upstream = adapter._upstream
    assert upstream is not None
    assert upstream.proxy == "http://proxy.example:3128"
    assert upstream.ca_certs == "/etc/ssl/corp-bundle.pem"
    assert isinstance(upstream._manager, urllib3.ProxyManager)


def test_no_proxy_exempts_the_upstream(
    make_spec: MakeSpec, adapters: list[OpenAIRemoteAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    upstream = loaded(make_spec(), adapters)._upstream
    assert upstream is not None and upstream.proxy is None


def test_missing_key_variable_fails_the_load_naming_it(
    make_spec: MakeSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ModelLoadFailed, match=KEY_ENV):
        OpenAIRemoteAdapter(spec, 0).load()
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(ModelLoadFailed, match="not set"):
        OpenAIRemoteAdapter(spec, 0).load()


def test_sequential_requests_reuse_one_keep_alive_connection(
    make_spec: MakeSpec, upstream: MisbehavingUpstream, adapters: list[OpenAIRemoteAdapter]
) -> None:
    adapter = loaded(make_spec(upstream, common={"target_inflight": 3}), adapters)
    upstream.script(Reply(status=400, error="bad"), Reply(status=429, error="slow down"))
    for _ in range(2):
        with pytest.raises(PoolError):
            run(adapter)  # error answers leave the connection usable too
    for _ in range(5):
        run(adapter)
    assert len(upstream.requests) == 7
    assert len(upstream.ports) == 1


def test_pool_size_is_target_inflight(make_spec: MakeSpec, adapters: list[OpenAIRemoteAdapter]) -> None:
    adapter = loaded(make_spec(common={"target_inflight": 5}), adapters)
    assert adapter._upstream is not None
    connections = adapter._upstream._manager.connection_from_url("https://api.example.com/v1")
    assert connections.pool is not None and connections.pool.maxsize == 5


def test_retries_429_then_succeeds_and_gives_up_after_max_retries(
    make_spec: MakeSpec, upstream: MisbehavingUpstream, adapters: list[OpenAIRemoteAdapter]
) -> None:
    adapter = loaded(make_spec(upstream, max_retries=2), adapters)
    upstream.script(
        Reply(status=429, error="slow down"), Reply(status=503, error="busy"), Reply(tokens=("ok",))
    )
    assert [c.text for c in run(adapter)][:1] == ["ok"]
    assert len(upstream.requests) == 3
    upstream.script(*[Reply(status=500, error="boom")] * 3)
    with pytest.raises(PoolError) as info:
        run(adapter)
    assert info.value.code == "upstream_server_error" and "boom" in info.value.message
    assert len(upstream.requests) == 6  # one try and two retries


def test_health_check_models_lists_the_remote_model(
    make_spec: MakeSpec, upstream: MisbehavingUpstream, adapters: list[OpenAIRemoteAdapter]
) -> None:
    loaded(make_spec(upstream, health_check="models"), adapters)
    assert [(s.method, s.path) for s in upstream.all_requests] == [("GET", "/v1/models")]
    with pytest.raises(ModelLoadFailed, match="'other-model' is not listed \\(remote-model\\)"):
        loaded(make_spec(upstream, health_check="models", model="other-model"), adapters)


def test_health_check_models_reports_the_upstreams_refusal_without_the_key(
    make_spec: MakeSpec,
    upstream: MisbehavingUpstream,
    adapters: list[OpenAIRemoteAdapter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key")
    with pytest.raises(ModelLoadFailed) as info:
        loaded(make_spec(upstream, health_check="models"), adapters)
    assert "answered 401: Incorrect API key provided" in info.value.message
    assert "sk-wrong-key" not in info.value.message


def test_close_ends_a_read_stalled_on_the_upstream(
    make_spec: MakeSpec, upstream: MisbehavingUpstream, adapters: list[OpenAIRemoteAdapter]
) -> None:
    adapter = loaded(make_spec(upstream, timeout_s=30), adapters)
    upstream.script(Reply(tokens=("a", "b", "c"), stall_after=1))
    outcome: dict[str, Any] = {}

    def consume() -> None:
        chunks = []
        try:
            for chunk in adapter.generate(GenerationRequest(input="x")):
                chunks.append(chunk)
        except PoolError as exc:
            outcome["error"] = exc
        outcome["chunks"] = chunks

    worker = threading.Thread(target=consume)
    worker.start()
    deadline = time.monotonic() + 5
    while not upstream.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # the client is now waiting for the chunk after "a"
    t0 = time.monotonic()
    adapter.close()
    worker.join(timeout=5)
    assert time.monotonic() - t0 < 2  # not the 30 s read timeout
    assert [c.text for c in outcome["chunks"]] == ["a"]
    assert outcome["error"].code == "upstream_connection"


def test_the_readme_example_is_valid_settings(write_settings: Callable[..., Path]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Remote upstreams (`openai_remote`)", 1)[1]
    example = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    write_settings(example)
    spec = load_settings().models["frontier-large"]
    assert spec.backend == "openai_remote" and spec.options["remote_max_retries"] == 2


class _Reads:
    """A response whose body arrives in the given pieces."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def read1(self, size: int) -> bytes:
        return self.pieces.pop(0)[:size] if self.pieces else b""


def test_lines_are_cut_as_they_arrive_crlf_and_split_lines_included() -> None:
    from llmpool.backends.openai_chat import _lines_as_they_arrive

    reads = _Reads(b'data: {"a":1}\r', b'\n\r\ndata: {"b"', b":2}\n\ndata: [DONE]")
    lines = [line for batch in _lines_as_they_arrive(reads) for line in batch]  # type: ignore[arg-type]
    assert lines == [b'data: {"a":1}', b"", b'data: {"b":2}', b"", b"data: [DONE]"]
