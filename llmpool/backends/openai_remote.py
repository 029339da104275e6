"""A remote OpenAI-compatible Chat Completions API (`openai_remote`), SPEC §7.

Nothing runs locally: `load` reads the API key from the environment variable named by
`remote_api_key_env` and opens one pool of keep-alive connections per replica
(`openai_chat.ChatUpstream`), sized to `target_inflight` (the executor never runs more
jobs than that on a replica, so requests reuse connections instead of opening one each).
`generate` streams through `openai_chat.stream_chat`, retries what is safe to retry, and
maps every upstream failure to an `upstream_*` error.

The key lives only in the connection pool's headers: it is never logged, never put in an
error (upstream messages are scrubbed of it, in case a provider echoes it), and the admin row
shows only the variable's name. Requests reach this backend only with
`allow_remote: true` (`Pool._admit` checks `is_remote` before anything is queued).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import urllib3
from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends.base import Adapter, Capabilities
from llmpool.backends.openai_chat import (
    ChatUpstream,
    UpstreamFailure,
    endpoint,
    error_text,
    prompt_body,
    read_capped,
    stream_chat,
)
from llmpool.config.fields import StrictFloat, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import (
    BackendError,
    ModelLoadFailed,
    PoolError,
    UpstreamAuthentication,
    UpstreamConnection,
    UpstreamInvalidRequest,
    UpstreamParse,
    UpstreamRateLimit,
    UpstreamServerError,
    UpstreamTimeout,
)
from llmpool.generation import Chunk, GenerationRequest
from llmpool.secrets import ENV_NAME
from llmpool.tool_calls import read_calls

log = logging.getLogger(__name__)

P = "remote_"
API_KINDS = ("chat_completions",)
HEALTH_CHECKS = ("config_only", "models")
THINKING = ("default", "enabled", "disabled")
# Jittered exponential backoff between retries: attempt n waits about BASE * 2**(n-1),
# at most CAP; an upstream Retry-After up to CAP is honoured as a minimum.
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0


def backoff_delay(attempt: int, retry_after: str | None = None) -> float:
    """Seconds to wait before retry `attempt` (1-based): "equal jitter" in [d/2, d]."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    try:
        asked = float(retry_after) if retry_after is not None else 0.0
    except ValueError:
        asked = 0.0  # an HTTP-date: not worth parsing for a capped wait
    return max(delay, min(asked, BACKOFF_CAP_S))


def retryable(exc: UpstreamFailure) -> bool:
    """Connection errors, 429 and 5xx, and only while nothing reached the client.

    Timeouts are not retried: the upstream may still be working (and billing) on it.
    """
    if exc.output_started:
        return False
    if exc.kind == "connection":
        return True
    return exc.kind == "status" and exc.status is not None and (exc.status == 429 or exc.status >= 500)


def upstream_error(exc: UpstreamFailure, model: str, secret: str | None = None) -> PoolError:
    """The pool's error for an upstream failure (SPEC §4 `upstream_*`), key scrubbed."""
    message = exc.message.replace(secret, "***") if secret else exc.message
    status = exc.status
    if exc.kind == "timeout":
        return UpstreamTimeout(message, model=model)
    if exc.kind in ("connection", "truncated"):
        return UpstreamConnection(message, model=model)
    if exc.kind == "parse":
        return UpstreamParse(message, model=model)
    if status in (401, 403):
        return UpstreamAuthentication(message, model=model)
    if status == 429:
        retry_after = (exc.retry_after or "").strip()[:64] or "1"
        return UpstreamRateLimit(message, model=model, headers={"Retry-After": retry_after})
    if status is not None and 400 <= status < 500:
        return UpstreamInvalidRequest(message, model=model)  # 400, 404, 413, 422 and the rest
    return UpstreamServerError(message, model=model)  # 5xx, or an error event in the stream


class OpenAIRemoteAdapter(Adapter):
    backend = "openai_remote"
    is_remote: ClassVar[bool] = True  # Pool._admit requires allow_remote for these
    blocking = False  # sockets only: cooperative under gevent
    can_batch = True  # target_inflight bounds our own concurrency towards the upstream

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self._upstream: ChatUpstream | None = None
        self._key: str | None = None

    # -- class-level facts -----------------------------------------------------------
    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        return {
            P + "api_kind": fields.String(
                load_default="chat_completions", validate=validate.OneOf(API_KINDS)
            ),
            P + "base_url": fields.Url(required=True, schemes={"http", "https"}, require_tld=False),
            # The *name* of the variable holding the key; unset for upstreams without auth.
            # Held to the shape of a name, so a key pasted here by mistake is refused
            # (without echoing it) instead of being shown as a "name" in admin rows.
            P + "api_key_env": fields.String(
                load_default=None,
                allow_none=True,
                validate=validate.Regexp(ENV_NAME, error="Must be an environment variable name."),
            ),
            P + "model": fields.String(required=True, validate=validate.Length(min=1)),
            P + "timeout_s": StrictFloat(
                load_default=120.0, validate=validate.Range(min=0, min_inclusive=False)
            ),
            P + "health_check": fields.String(
                load_default="config_only", validate=validate.OneOf(HEALTH_CHECKS)
            ),
            P + "max_retries": StrictInt(load_default=0, validate=validate.Range(0, 10)),
            P + "thinking": fields.String(
                load_default=None, allow_none=True, validate=validate.OneOf(THINKING)
            ),
            P + "headers": fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict),
        }

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        # An operator who sets remote_thinking, or names a reasoning format, says the
        # upstream understands chat_template_kwargs: requests may then choose too.
        thinking = spec.options.get(P + "thinking") in ("enabled", "disabled")
        thinking = thinking or prompts.reasoning_markers(spec.prompt_format) is not None
        return Capabilities(
            modalities=spec.modalities,
            multi_turn=True,
            thinking_modes=THINKING if thinking else ("default",),
            structured_output=True,  # response_format passed on; the answer is checked here
            structured_after_thinking=True,  # the upstream's own affair; the answer is checked
            tool_calls=True,  # tools passed on, calls read back; checked here all the same
            forced_tool_calls=True,  # the upstream's to hold; a call that is missing is a 502
            decoding=("seed",),  # Chat Completions has no top_k, repetition penalty or beams
            message_names=True,  # passed on as sent
        )

    # -- helpers ---------------------------------------------------------------------
    def option(self, key: str) -> Any:
        return self.spec.options[P + key]

    @functools.cached_property
    def label(self) -> str:
        # Scheme, host and port only: a base URL may carry user:password. Worked out once:
        # every request names it (for its errors), and the spec is fixed for an adapter.
        url = urlsplit(self.option("base_url"))
        host = url.hostname or "?"
        return f"upstream '{self.option('model')}' at {url.scheme}://{host}" + (
            f":{url.port}" if url.port else ""
        )

    def _url(self, path: str) -> str:
        return self.option("base_url").rstrip("/") + path

    def _timeout(self) -> tuple[float, float]:
        t = float(self.option("timeout_s"))
        return (t, t)  # connect; read = first byte and every pause between chunks

    # -- lifecycle -------------------------------------------------------------------
    @classmethod
    def memory_device(cls, spec: ModelSpec) -> str | None:
        return None  # the memory is the provider's

    def load(self) -> None:
        """Read the key, open the pooled session, optionally probe `GET {base}/models`.

        Raises ModelLoadFailed naming the variable (never its value) when the key is missing.
        """
        name = self.spec.name
        key_env = self.option("api_key_env")
        if key_env:
            self._key = os.environ.get(key_env) or None
            if self._key is None:
                raise ModelLoadFailed(
                    f"remote_api_key_env names the environment variable {key_env}, "
                    "which is not set (or empty) in the pool's environment",
                    model=name,
                )
        headers = dict(self.option("headers"))
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key}"
        # maxsize = the replica's slots: every concurrent job keeps its own connection
        # alive between requests. The environment's proxy and CA bundle are read here,
        # once (requests would re-read os.environ on every call).
        if self.option("health_check") == "models":
            # Through connections of its own: load runs on a real thread, and a pooled
            # connection made there must never be reused by a job on the hub.
            probe = ChatUpstream(self.option("base_url"), maxsize=1, headers=headers, from_env=True)
            try:
                self._check_models(probe)
            finally:
                probe.close()
        self._upstream = ChatUpstream(
            self.option("base_url"), maxsize=self.spec.target_inflight, headers=headers, from_env=True
        )

    def _check_models(self, upstream: ChatUpstream) -> None:
        name, model = self.spec.name, self.option("model")
        try:
            response = upstream.request("GET", self._url("/models"), timeout=self._timeout())
            body = read_capped(response)
            response.release_conn()
        except urllib3.exceptions.NewConnectionError as exc:
            raise ModelLoadFailed(f"cannot reach {self.label}: {exc}", model=name) from None
        except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            raise ModelLoadFailed(f"{self.label}: GET /models timed out: {exc}", model=name) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ModelLoadFailed(f"cannot reach {self.label}: {exc}", model=name) from None
        if response.status != 200:
            text = self._scrub(error_text(body))
            raise ModelLoadFailed(f"{self.label}: GET /models answered {response.status}: {text}", model=name)
        try:
            ids = [m.get("id") for m in json.loads(body).get("data") or ()]
        except (ValueError, AttributeError):
            raise ModelLoadFailed(
                f"{self.label}: GET /models did not answer a model list", model=name
            ) from None
        if model not in ids:
            listed = ", ".join(str(i) for i in ids[:20])
            raise ModelLoadFailed(
                f"{self.label}: remote_model {model!r} is not listed ({listed})", model=name
            )

    def close(self) -> None:
        """Drop the connections. A job still waiting on the upstream (a forced unload
        after the grace period) has its socket shut down, so its read ends now, not at
        the timeout."""
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        self._key = None

    # -- generation ------------------------------------------------------------------
    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        """Chat Completions body (Completions for a raw prompt): temperature, top_p,
        max_tokens, stop and seed are mapped. beam_size, top_k and repetition_penalty have no
        Chat Completions field: a request that sets one is refused (`capabilities`), and
        engine.decoding's defaults for them do not apply here."""
        d = request.decoding
        body: dict[str, Any] = {
            "model": self.option("model"),
            **prompt_body(request),
            "max_tokens": d.max_tokens,
            "temperature": d.temperature,
            "top_p": d.top_p,
        }
        if d.stop:
            body["stop"] = list(d.stop)
        if d.seed is not None:
            body["seed"] = d.seed
        thinking = request.thinking if request.thinking != "default" else self.option("thinking")
        if thinking in ("enabled", "disabled") and request.prompt is None:
            # The convention of vLLM, SGLang and llama-server for Qwen3-style templates.
            body["chat_template_kwargs"] = {"enable_thinking": thinking == "enabled"}
        return body

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        """Stream from the upstream; retry before any output, else raise `upstream_*`.

        Cooperative (sockets and sleeps only). Closing the iterator closes the upstream
        connection, so a cancelled job stops the provider's generation too.
        """
        upstream = self._upstream
        if upstream is None:
            raise BackendError("remote model is not loaded", model=self.spec.name)
        payload = self.payload(request)
        retries = int(self.option("max_retries"))
        attempt = 0
        while True:
            try:
                chunks = stream_chat(
                    upstream,
                    self._url(endpoint(request)),
                    payload,
                    timeout=self._timeout(),
                    label=self.label,
                    # Thoughts the upstream left inline in `content` (no reasoning
                    # parser there) are split out here, for a reasoning format.
                    splitter=prompts.request_splitter(self.spec, request),
                )
                yield from read_calls(chunks, prompts.request_tool_markers(self.spec, request))
                return
            except UpstreamFailure as exc:
                if attempt >= retries or not retryable(exc):
                    raise upstream_error(exc, self.spec.name, self._key) from None
                attempt += 1
                delay = backoff_delay(attempt, exc.retry_after)
                log.warning(
                    "%s: %s; retry %d/%d in %.2fs",
                    self.spec.name,
                    self._scrub(exc.message),
                    attempt,
                    retries,
                    delay,
                )
                time.sleep(delay)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text
