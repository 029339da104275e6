"""Client side of OpenAI-compatible Chat Completions streaming, shared by every backend
that talks to such a server (llama-server and vllm serve children; remote APIs).

`stream_chat` yields our `Chunk`s as the server's SSE chunks arrive (no re-chunking) and
closes the HTTP response when the consumer stops, which is how a cancelled job makes the
server stop generating.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import requests
import urllib3

from llmpool.generation import Chunk, Final, GenerationRequest


class UpstreamFailure(Exception):
    """What went wrong talking to an OpenAI-compatible server, for the adapter to map.

    `kind`: "status" (an HTTP error answer; `status` set), "timeout", "connection",
    "parse" (not the protocol we speak) or "truncated" (stream cut before it finished).
    `output_started`: whether any delta was already yielded (then nothing may be retried).
    `retry_after`: the server's Retry-After header on a status answer, verbatim, if any.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        output_started: bool = False,
        retry_after: str | None = None,
    ):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.output_started = output_started
        self.retry_after = retry_after


def chat_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """Our request as OpenAI chat messages; content arrays (text, image_url) pass through."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if request.messages is not None:
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
    else:
        messages.append({"role": "user", "content": request.input})
    return messages


def _final(
    finish: str,
    usage: dict[str, Any] | None,
    timings: dict[str, Any] | None,
    started: float,
    first: float | None,
) -> Final:
    done = time.perf_counter()
    usage = usage or {}
    timings = timings or {}
    prompt_ms, predicted_ms = timings.get("prompt_ms"), timings.get("predicted_ms")
    # llama-server reports its own timings; other servers leave us the wall clock.
    ttft: float | None
    if prompt_ms is not None and predicted_ms is not None:
        ttft, total = float(prompt_ms), float(prompt_ms) + float(predicted_ms)
    else:
        ttft = None if first is None else (first - started) * 1000
        total = (done - started) * 1000
    return Final(
        finish_reason="length" if finish == "length" else "stop",
        prompt_tokens=usage.get("prompt_tokens", timings.get("prompt_n")),
        output_tokens=usage.get("completion_tokens", timings.get("predicted_n")),
        time_to_first_token_ms=None if ttft is None else round(ttft, 3),
        generate_total_ms=round(total, 3),
    )


def error_text(response: requests.Response) -> str:
    """The server's error message (OpenAI `{"error": {"message"}}` or the raw body), ≤500 chars."""
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        return str(message)[:500]
    except ValueError:
        return response.text[:500]


def _lines_as_they_arrive(response: requests.Response) -> Iterator[bytes]:
    """Split the body into lines as bytes arrive.

    `Response.iter_lines` waits for 512 bytes (or the end of a close-delimited body)
    before yielding, which would batch tokens; `read1` returns whatever has arrived.
    """
    pending = b""
    while True:
        data = response.raw.read1(65536)
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
    if pending:
        yield pending


def _finish_body(response: requests.Response) -> None:
    """Read what follows `[DONE]` (normally just the chunked-encoding terminator).

    A body read to its end lets urllib3 put the connection back in the session's pool for
    the next request (keep-alive); one left unread makes `close()` drop the connection.
    Bounded, and best effort: on any trouble the caller's `close()` drops it instead.
    """
    budget = 65536
    try:
        while budget > 0 and (data := response.raw.read1(budget)):
            budget -= len(data)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        pass


def stream_chat(
    session: requests.Session,
    url: str,
    payload: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    timeout: tuple[float, float] = (5.0, 600.0),
    label: str = "runtime",
) -> Iterator[Chunk]:
    """POST `payload` with stream=true and yield chunks as they arrive.

    Raises UpstreamFailure; the read timeout bounds the wait for the first byte and every
    pause between two chunks.
    """
    started = time.perf_counter()
    body = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    try:
        response = session.post(url, json=body, headers=headers, stream=True, timeout=timeout)
    except requests.Timeout as exc:
        raise UpstreamFailure("timeout", f"{label} did not answer in time: {exc}") from exc
    except requests.RequestException as exc:
        raise UpstreamFailure("connection", f"cannot reach {label}: {exc}") from exc
    first: float | None = None
    finish, usage, timings = "stop", None, None
    ended = False  # [DONE] or a finish_reason seen: anything else is a truncated stream
    try:
        if response.status_code >= 400:
            raise UpstreamFailure(
                "status",
                f"{label} answered {response.status_code}: {error_text(response)}",
                status=response.status_code,
                retry_after=response.headers.get("Retry-After"),
            )
        for line in _lines_as_they_arrive(response):
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == b"[DONE]":
                ended = True
                break
            obj = json.loads(data)
            if obj.get("error"):
                error = obj["error"]
                text = error.get("message", error) if isinstance(error, dict) else error
                raise UpstreamFailure(
                    "status", f"{label}: {str(text)[:500]}", output_started=first is not None
                )
            usage = obj.get("usage") or usage
            timings = obj.get("timings") or timings
            for choice in obj.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
                if text or reasoning:
                    first = first or time.perf_counter()
                    yield Chunk(text=text, reasoning=reasoning)
                if choice.get("finish_reason"):
                    finish, ended = choice["finish_reason"], True
        if not ended:
            raise UpstreamFailure(
                "truncated", f"{label} closed the stream before it finished", output_started=first is not None
            )
        _finish_body(response)
        yield Chunk(final=_final(finish, usage, timings, started, first))
    except (requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
        raise UpstreamFailure("timeout", f"{label} stalled: {exc}", output_started=first is not None) from exc
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise UpstreamFailure(
            "connection", f"connection to {label} lost: {exc}", output_started=first is not None
        ) from exc
    except (ValueError, AttributeError, TypeError) as exc:
        raise UpstreamFailure(
            "parse", f"{label} sent a malformed stream: {exc}", output_started=first is not None
        ) from exc
    finally:
        # On cancel or error the connection is dropped, so the server sees the disconnect
        # and stops; a body read to its end already went back to the pool (no-op here).
        response.close()
