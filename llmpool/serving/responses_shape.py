"""OpenAI's Responses objects for POST /v1/responses, beside the pool's own fields (SPEC §10).

Two kinds of clients read the same answer, and both keep working:

- the pool's own clients read top-level `output_text`, `reasoning_text`, `finish_reason`,
  `usage.input_tokens/output_tokens`, `metrics` and `output[0]`, which stays the item it
  always was, `{"type": "output_text", "text": ...}` (except on a request for structured
  output, which is new: OpenAI's items only, see `output_items`);
- the official `openai` SDK reads OpenAI items from `output`: its `Response.output_text`
  joins the `output_text` parts of `message` items and ignores item types it does not
  use, such as our legacy first item. So the OpenAI items follow it: a `reasoning` item
  when the model reasoned, then the assistant `message`.

The stream mirrors this: `ResponseEvents` turns a job's deltas into OpenAI's event
sequence (every event with `type` and `sequence_number`; items and content parts opened
before their first delta and closed before `response.completed`), while each event keeps
the fields the pool's clients read (`id`, `delta`, and the top-level fields of
`response.completed`). The response objects inside the stream hold OpenAI's items only,
from output index 0: no streaming client of the pool reads them, and the SDK's stream
helper re-serialises the final response, where our legacy item (which it can only model
as a `message` with the wrong type) would make pydantic warn on every stream.

Nothing here knows SSE: events are (name, data) pairs, framed by `llmpool.serving.sse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmpool.generation import Final, Tool, ToolCall, ToolCallDelta
from llmpool.job import Delta, Done, Job
from llmpool.serving.formats import text_format_echo

Event = tuple[str, dict[str, Any]]


def usage(final: Final | None) -> dict[str, Any]:
    """The pool's usage (input/output tokens, null where unknown) under OpenAI's names;
    the details the runtimes do not report stay null."""
    prompt = final.prompt_tokens if final else None
    output = final.output_tokens if final else None
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": prompt + output if prompt is not None and output is not None else None,
        "input_tokens_details": {"cached_tokens": None},
        "output_tokens_details": {"reasoning_tokens": None},
    }


def status_of(finish_reason: str) -> str:
    # OpenAI marks an answer cut by max_output_tokens "incomplete".
    return "incomplete" if finish_reason == "length" else "completed"


def legacy_item(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text}


def message_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [message_part(text)]
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def reasoning_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [reasoning_part(text)]
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def function_call_item(item: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def item_id(job: Job, kind: str) -> str:
    """`msg_<hex>` / `rs_<hex>`: the job's own hex, so logs name a request one way."""
    return f"{kind}_" + job.id.removeprefix("resp_")


def output_items(job: Job, done: Done) -> list[dict[str, Any]]:
    """`output` of a finished response: the legacy item (see `openai_only`), then OpenAI's
    items: reasoning, the message (left out when the answer is calls only), the calls."""
    status = status_of(done.finish_reason)
    out = [] if openai_only(job) else [legacy_item(done.output_text)]
    if done.reasoning_text:
        out.append(reasoning_item(item_id(job, "rs"), done.reasoning_text, status))
    if done.output_text or not done.tool_calls:
        out.append(message_item(item_id(job, "msg"), done.output_text, status))
    for i, call in enumerate(done.tool_calls):
        out.append(function_call_item(f"{item_id(job, 'fc')}_{i}", call, "completed"))
    return out


def openai_only(job: Job) -> bool:
    """Requests the pool never took before (structured output, tools) get OpenAI's items
    only: the SDK's `responses.parse` and its tool helpers re-validate the whole output,
    and the legacy item is no item they can model."""
    return job.request.output_format is not None or job.request.tools is not None


def response_object(
    job: Job,
    echo: dict[str, Any],
    status: str,
    output: list[dict[str, Any]],
    *,
    final: Final | None = None,
    finish_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """OpenAI's `Response` object (what the SDK parses), with the request's settings.

    `echo` holds the request fields the job does not carry (metadata, reasoning, ...).
    """
    d, tools = job.request.decoding, job.request.tools
    return {
        "id": job.id,
        "object": "response",
        "created_at": job.created,
        "created": job.created,
        "model": job.model,
        "status": status,
        "output": output,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if finish_reason == "length" else None,
        "instructions": job.request.instructions,
        "max_output_tokens": d.max_tokens,
        "temperature": d.temperature,
        "top_p": d.top_p,
        "parallel_tool_calls": tools.parallel if tools is not None else False,
        "tool_choice": tools.openai_choice() if tools is not None else "none",
        "tools": [responses_tool(t) for t in tools.tools] if tools is not None else [],
        "text": {"format": text_format_echo(job.request.output_format)},
        "store": False,
        "truncation": "disabled",
        "usage": usage(final) if status not in ("in_progress", "failed") else None,
        **echo,
    }


def responses_tool(tool: Tool) -> dict[str, Any]:
    """A tool as the Responses API writes it (flat, unlike Chat Completions')."""
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
    }


@dataclass
class _Item:
    kind: str  # "reasoning" | "message" | "function_call"
    id: str
    index: int
    text: list[str] = field(default_factory=list)  # the text, or a call's arguments
    call_id: str = ""
    name: str = ""


class ResponseEvents:
    """OpenAI's Responses stream events for one job, numbered in order.

    Not thread-safe; one per stream. `open()` first, then `delta()` per backend delta,
    then `close()` or `failed()`.
    """

    def __init__(self, job: Job, echo: dict[str, Any]) -> None:
        self.job = job
        self.echo = echo
        self.sequence = 0
        self.items: dict[str, _Item] = {}  # reasoning and message, by kind
        self.calls: dict[int, _Item] = {}  # function calls, by the call's index

    def event(self, name: str, /, **data: Any) -> Event:
        return name, {"type": name, "sequence_number": self._number(), **data}

    def _number(self) -> int:
        self.sequence += 1
        return self.sequence - 1

    def open(self) -> list[Event]:
        job = self.job
        created = response_object(job, self.echo, "in_progress", [])
        return [
            self.event("response.created", id=job.id, model=job.model, response=created),
            self.event("response.in_progress", id=job.id, model=job.model, response=created),
        ]

    def delta(self, delta: Delta) -> list[Event]:
        out: list[Event] = []
        if delta.reasoning:
            self._append("reasoning", delta.reasoning, out)
        if delta.text:
            self._append("message", delta.text, out)
        if delta.tool_call is not None:
            self._call(delta.tool_call, out)
        return out

    def _call(self, piece: ToolCallDelta, out: list[Event]) -> None:
        """A function_call item opened by the piece that names it; argument deltas after."""
        item = self.calls.get(piece.index)
        if item is None:
            item = _Item("function_call", f"{item_id(self.job, 'fc')}_{piece.index}", self._next_index())
            item.call_id, item.name = piece.id or "", piece.name or ""
            self.calls[piece.index] = item
            call = ToolCall(item.call_id, item.name, "")
            added = function_call_item(item.id, call, "in_progress")
            out.append(self.event("response.output_item.added", output_index=item.index, item=added))
        if piece.arguments:
            item.text.append(piece.arguments)
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.index,
                    delta=piece.arguments,
                )
            )

    def _next_index(self) -> int:
        return len(self.items) + len(self.calls)

    def _append(self, kind: str, text: str, out: list[Event]) -> None:
        """One delta event for the open item of `kind` (opened first if need be)."""
        self._item(kind, out).text.append(text)
        out.append(self.text_delta(kind, text, self._number()))

    def append_open(self, kind: str, text: str) -> int | None:
        """`text` added to the item of `kind` if it is open: the sequence number of its
        delta event, for a stream that renders `text_delta` once (a template); None if
        the item is not open yet (then `delta()` opens it)."""
        item = self.items.get(kind)
        if item is None:
            return None
        item.text.append(text)
        return self._number()

    def text_delta(self, kind: str, text: str, sequence: int | str) -> Event:
        """The delta event of the open reasoning or message item (`kind`)."""
        item = self.items[kind]
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        data: dict[str, Any] = {
            "type": name,
            "sequence_number": sequence,
            "id": self.job.id,
            "delta": text,
            "item_id": item.id,
            "output_index": item.index,
            "content_index": 0,
        }
        if kind == "message":
            data["logprobs"] = []
        return name, data

    def _item(self, kind: str, out: list[Event]) -> _Item:
        """The open item of `kind`; opened (added, with its content part) on first use."""
        item = self.items.get(kind)
        if item is not None:
            return item
        prefix = "rs" if kind == "reasoning" else "msg"
        item = self.items[kind] = _Item(kind, item_id(self.job, prefix), self._next_index())
        build = reasoning_item if kind == "reasoning" else message_item
        part = reasoning_part("") if kind == "reasoning" else message_part("")
        out.append(
            self.event(
                "response.output_item.added",
                output_index=item.index,
                item=build(item.id, None, "in_progress"),
            )
        )
        out.append(
            self.event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=part,
            )
        )
        return item

    def close(self, done: Done) -> tuple[list[Event], list[dict[str, Any]]]:
        """The events that close every item (a message item is opened first if the model
        said nothing), and the final `output` list (OpenAI's items only)."""
        out: list[Event] = []
        if not self.calls:
            self._item("message", out)
        status = status_of(done.finish_reason)
        output: list[dict[str, Any]] = []
        for item in sorted([*self.items.values(), *self.calls.values()], key=lambda i: i.index):
            text = "".join(item.text)
            if item.kind == "function_call":
                full = function_call_item(item.id, ToolCall(item.call_id, item.name, text), "completed")
                where = {"item_id": item.id, "output_index": item.index}
                out.append(
                    self.event(
                        "response.function_call_arguments.done", **where, name=item.name, arguments=text
                    )
                )
                out.append(self.event("response.output_item.done", output_index=item.index, item=full))
                output.append(full)
                continue
            where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            if item.kind == "reasoning":
                full = reasoning_item(item.id, text, status)
                out.append(self.event("response.reasoning_text.done", **where, text=text))
            else:
                full = message_item(item.id, text, status)
                out.append(self.event("response.output_text.done", **where, text=text, logprobs=[]))
            out.append(self.event("response.content_part.done", **where, part=full["content"][0]))
            out.append(self.event("response.output_item.done", output_index=item.index, item=full))
            output.append(full)
        return out, output

    def completed(self, done: Done, output: list[dict[str, Any]], top: dict[str, Any]) -> Event:
        """`response.completed`: the pool's top-level fields `top` plus the final response."""
        response = response_object(
            self.job,
            self.echo,
            status_of(done.finish_reason),
            output,
            final=done.final,
            finish_reason=done.finish_reason,
        )
        return self.event("response.completed", **top, response=response)

    def failed(self, code: str, message: str) -> Event:
        """`response.failed`: its top-level `error` makes the SDK raise (openai APIError)."""
        error = {"code": code, "message": message}
        response = {
            "id": self.job.id,
            "object": "response",
            "created_at": self.job.created,
            "model": self.job.model,
            "status": "failed",
            "error": error,
            "output": [],
        }
        return self.event("response.failed", id=self.job.id, error=error, response=response)
