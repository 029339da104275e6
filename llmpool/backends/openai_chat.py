"""Client side of OpenAI-compatible Chat Completions streaming, shared by every backend
that talks to such a server (llama-server and vllm serve children; remote APIs).

`stream_chat` yields our `Chunk`s as the server's SSE chunks arrive (no re-chunking) and
closes the HTTP response when the consumer stops, which is how a cancelled job makes the
server stop generating. `ChatUpstream` holds the keep-alive connections it uses.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import orjson
import urllib3

from llmpool.backends.chat_upstream import ChatUpstream, UpstreamResponse, read_capped
from llmpool.generation import Chunk, Final, GenerationRequest, ToolCallDelta
from llmpool.reasoning import ReasoningSplitter
from llmpool.tool_calls import call_id


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
    """Our request as OpenAI chat messages; content arrays (text, image_url) pass through,
    and so do an assistant turn's tool calls and a tool turn's call id."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if request.messages is None:
        return [*messages, {"role": "user", "content": request.input}]
    for m in request.messages:
        entry: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            entry["tool_calls"] = [call.openai() for call in m.tool_calls]
        if m.tool_call_id is not None:
            entry["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            entry["name"] = m.name
        messages.append(entry)
    return messages


def _tool_call_piece(piece: dict[str, Any]) -> ToolCallDelta:
    """An OpenAI `delta.tool_calls` entry. The piece that names the function opens the
    call (with the server's id, or one of ours where it sent none); later pieces add
    argument text, whatever else a server repeats in them."""
    function = piece.get("function") or {}
    name = function.get("name") or None
    call = (piece.get("id") or call_id()) if name else None
    return ToolCallDelta(int(piece.get("index") or 0), call, name, function.get("arguments") or "")


def endpoint(request: GenerationRequest) -> str:
    """The path (after `/v1`) that serves `request`: Completions for a raw prompt."""
    return "/completions" if request.prompt is not None else "/chat/completions"


def prompt_body(request: GenerationRequest) -> dict[str, Any]:
    """The prompt part of the body for `endpoint(request)`."""
    if request.prompt is not None:
        return {"prompt": request.prompt}
    body: dict[str, Any] = {"messages": chat_messages(request)}
    if request.output_format is not None:
        # llama-server (a grammar from the schema) and vLLM (structured outputs) constrain
        # the answer themselves; a remote API gets what the client sent.
        body["response_format"] = request.output_format.openai()
    if request.tools is not None:
        body["tools"] = [tool.openai() for tool in request.tools.tools]
        body["tool_choice"] = request.tools.openai_choice()
        body["parallel_tool_calls"] = request.tools.parallel
    return body


def _final(
    finish: str,
    usage: dict[str, Any] | None,
    timings: dict[str, Any] | None,
    started: float,
    first: float | None,
    stop_sequence: str | None = None,
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
        stop_sequence=stop_sequence,
        prompt_tokens=usage.get("prompt_tokens", timings.get("prompt_n")),
        output_tokens=usage.get("completion_tokens", timings.get("predicted_n")),
        time_to_first_token_ms=None if ttft is None else round(ttft, 3),
        generate_total_ms=round(total, 3),
    )


def error_text(body: bytes) -> str:
    """The server's error message (OpenAI `{"error": {"message"}}` or the raw body), ≤500 chars."""
    try:
        parsed = json.loads(body)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        message = error.get("message", error) if isinstance(error, dict) else error
        return str(message)[:500]
    except ValueError:
        return body.decode("utf-8", "replace")[:500]


def _lines_as_they_arrive(response: UpstreamResponse) -> Iterator[list[bytes]]:
    """The body's complete lines, as a list per read, as bytes arrive.

    `Response.iter_lines` waits for 512 bytes (or the end of a close-delimited body)
    before yielding, which would batch tokens; `read1` returns whatever has arrived. A
    list per read, not a line per resume: the relay's loop walks it in C (`chain`).
    """
    pending = b""
    size = 4096  # the first read small: the first token is split out of 4 KB, not 64
    while True:
        data = response.read1(size)
        size = 65536
        if not data:
            break
        buffer = pending + data
        *lines, pending = buffer.split(b"\n")
        if b"\r" in buffer:
            lines = [line.rstrip(b"\r") for line in lines]
        yield lines
    if pending:
        yield [pending]


def _finish_body(response: UpstreamResponse) -> bool:
    """Read what follows `[DONE]` (normally just the chunked-encoding terminator); True
    when the body ended, so the connection can go back to the pool for the next request
    (keep-alive). Bounded, and best effort: on any trouble the connection is dropped.
    """
    budget = 65536
    try:
        while budget > 0 and (data := response.read1(budget)):
            budget -= len(data)
        return budget > 0
    except (urllib3.exceptions.HTTPError, OSError):
        return False


def stream_chat(
    upstream: ChatUpstream,
    url: str,
    payload: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    timeout: tuple[float, float] = (5.0, 600.0),
    label: str = "runtime",
    splitter: ReasoningSplitter | None = None,
) -> Iterator[Chunk]:
    """POST `payload` with stream=true and yield chunks as they arrive.

    The server's `reasoning_content` (llama-server, vLLM) or `reasoning` (OpenRouter,
    newer vLLM) deltas are reasoning. With a `splitter` (a reasoning model's format),
    `content` goes through it too: a server that did not split the thoughts out (no
    reasoning parser, a template it does not know) still never passes them on as answer.
    Raises UpstreamFailure; the read timeout bounds the wait for the first byte and every
    pause between two chunks.
    """
    started = time.perf_counter()
    body = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    try:
        response = upstream.request("POST", url, body=body, headers=headers, timeout=timeout)
    except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass
        raise UpstreamFailure("connection", f"cannot reach {label}: {exc}") from exc
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise UpstreamFailure("timeout", f"{label} did not answer in time: {exc}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise UpstreamFailure("connection", f"cannot reach {label}: {exc}") from exc
    first: float | None = None
    finish, usage, timings = "stop", None, None
    stopped_by: str | None = None  # vLLM names the stop string that ended the text
    stops = payload.get("stop") or ()
    ended = False  # [DONE] or a finish_reason seen: anything else is a truncated stream
    reusable = False
    try:
        if response.status >= 400:
            text = error_text(read_capped(response))
            reusable = _finish_body(response)  # an error answer read to its end keeps the connection
            raise UpstreamFailure(
                "status",
                f"{label} answered {response.status}: {text}",
                status=response.status,
                retry_after=response.headers.get("Retry-After"),
            )
        for line in itertools.chain.from_iterable(_lines_as_they_arrive(response)):
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == b"[DONE]":
                ended = True
                break
            try:  # inline: this is once per token
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                # What orjson refuses and `json` takes: a lone surrogate escape (a server
                # that cuts an emoji's pair in two sends one), NaN; the rest fails as before.
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
                # Completions chunks carry `text` where chat chunks carry `delta.content`.
                text = delta.get("content") or choice.get("text") or ""
                reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
                if text or reasoning:
                    first = first or time.perf_counter()
                    if splitter is None:
                        yield Chunk(text=text, reasoning=reasoning)
                    else:
                        yield from _split(splitter, text, reasoning)
                for piece in delta.get("tool_calls") or ():
                    first = first or time.perf_counter()
                    yield Chunk(tool_call=_tool_call_piece(piece))
                if choice.get("finish_reason"):
                    finish, ended = choice["finish_reason"], True
                if choice.get("stop_reason") in stops:
                    stopped_by = choice["stop_reason"]
        if not ended:
            raise UpstreamFailure(
                "truncated", f"{label} closed the stream before it finished", output_started=first is not None
            )
        reusable = _finish_body(response)
        if splitter is not None:
            yield from (Chunk(text=t, reasoning=r) for t, r in splitter.flush())
        yield Chunk(final=_final(finish, usage, timings, started, first, stopped_by))
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise UpstreamFailure("timeout", f"{label} stalled: {exc}", output_started=first is not None) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise UpstreamFailure(
            "connection", f"connection to {label} lost: {exc}", output_started=first is not None
        ) from exc
    except (ValueError, AttributeError, TypeError) as exc:
        raise UpstreamFailure(
            "parse", f"{label} sent a malformed stream: {exc}", output_started=first is not None
        ) from exc
    finally:
        # A body read to its end returns its connection to the pool alive. On cancel or
        # error the connection is closed first, so the server sees the disconnect and
        # stops; the pool then opens a fresh one in its place.
        if not reusable:
            response.close()
        response.release_conn()


def _split(splitter: ReasoningSplitter, text: str, reasoning: str) -> Iterator[Chunk]:
    if reasoning:
        yield Chunk(reasoning=reasoning)
    for answer, thought in splitter.feed(text):
        yield Chunk(text=answer, reasoning=thought)
