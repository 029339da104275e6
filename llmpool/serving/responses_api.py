"""POST /v1/responses as a serving API: the pool's own request and OpenAI's Responses,
one answer that both kinds of client read (SPEC §3, §10).

The request mapping is `responses_request`, the objects and the event sequence are
`responses_shape`; this module puts them behind the pipeline's `Api`.

Stream framing, in order: response.created and response.in_progress, comments while
waiting, for each output item its response.output_item.added and
response.content_part.added before its first delta, the reasoning and output deltas as
the backend produces them, the items' closing events (response.*_text.done,
response.content_part.done, response.output_item.done), response.metrics,
response.completed; or response.failed when the job fails after the stream began.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from llmpool.errors import PoolError
from llmpool.generation import GenerationRequest
from llmpool.job import Delta, Done, Job
from llmpool.pool import Pool
from llmpool.serving.api import Api, Call, Encoder
from llmpool.serving.responses_request import to_generation_request
from llmpool.serving.responses_shape import ResponseEvents, output_items, response_object, status_of, usage
from llmpool.serving.sse import Template, frame


def echo_fields(call: Call) -> dict[str, Any]:
    """Request fields OpenAI's response object repeats that the job does not carry."""
    body = call.body
    reasoning = body["reasoning"] or {}
    return {
        "metadata": body["metadata"] or {},
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "user": body["user"],
        "thinking": call.request.thinking,
    }


def completed_payload(job: Job, done: Done) -> dict[str, Any]:
    """The pool's own top-level fields of a finished response (JSON and stream)."""
    return {
        "id": job.id,
        "output_text": done.output_text,
        "reasoning_text": done.reasoning_text,
        "finish_reason": done.finish_reason,
        "usage": usage(done.final),
    }


class ResponsesApi(Api):
    name = "responses"

    def to_request(self, body: dict[str, Any], pool: Pool) -> GenerationRequest:
        return to_generation_request(body, pool)

    def answer(self, call: Call, done: Done) -> dict[str, Any]:
        # OpenAI's response object, with the pool's own fields on top (they agree where
        # both have a key: id, model, usage); `output[0]` stays the legacy item.
        job = call.job
        payload = response_object(
            job,
            echo_fields(call),
            status_of(done.finish_reason),
            output_items(job, done),
            final=done.final,
            finish_reason=done.finish_reason,
        )
        payload.update(completed_payload(job, done), metrics=job.metrics(done.final))
        return payload

    def encoder(self, call: Call) -> Encoder:
        return ResponsesStream(call.job, echo_fields(call))


class ResponsesStream(Encoder):
    def __init__(self, job: Job, echo: dict[str, Any]) -> None:
        self.job = job
        self.events = ResponseEvents(job, echo)
        # The delta event of an open item, rendered once per item kind (sse.Template):
        # all but its first delta are filled in, not built and encoded.
        self._templates: dict[str, Template] = {}

    def open(self) -> Iterator[str]:
        for opened in self.events.open():
            yield frame(*opened)

    def delta(self, delta: Delta) -> Iterable[str]:
        if delta.tool_call is None and bool(delta.text) != bool(delta.reasoning):
            kind, text = ("message", delta.text) if delta.text else ("reasoning", delta.reasoning)
            sequence = self.events.append_open(kind, text)
            if sequence is not None:
                return (self._template(kind).fill_numbered(sequence, text),)
        return [frame(*event) for event in self.events.delta(delta)]

    def _template(self, kind: str) -> Template:
        template = self._templates.get(kind)
        if template is None:
            text_delta = self.events.text_delta
            template = Template(lambda sequence, text: frame(*text_delta(kind, text, sequence)), 2)
            self._templates[kind] = template
        return template

    def done(self, done: Done) -> Iterator[str]:
        job, events = self.job, self.events
        closing, output = events.close(done)
        for closed in closing:
            yield frame(*closed)
        yield frame(*events.event("response.metrics", id=job.id, metrics=job.metrics(done.final)))
        yield frame(*events.completed(done, output, completed_payload(job, done)))

    def failed(self, error: PoolError) -> str:
        return frame(*self.events.failed(error.code, error.message))
