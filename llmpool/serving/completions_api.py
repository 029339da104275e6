"""OpenAI's legacy Completions (POST /v1/completions) as a serving API: a raw prompt.

The prompt reaches the runtime as it is, through no chat template and no prompt format
(`GenerationRequest.prompt`; the tokenizer adds BOS as usual), and the runtime's text
comes back unsplit.

- request: `model`, `prompt` (a string, or a list of one string), `max_tokens` (omitted:
  `engine.decoding.max_tokens`, not OpenAI's 16), `temperature`, `top_p`, `stop`,
  `stream`, `stream_options.include_usage`, plus `top_k` and `repetition_penalty` as vLLM
  takes them. `n`/`best_of` other than 1, `echo`, `logprobs`, a non-empty `suffix` or
  `logit_bias` are a 400 naming the field (refused by the request schema, before this
  module sees the body).
- JSON: a `text_completion` object with `usage` and the pool's `metrics`.
- stream: chunks of the same object with text deltas, a last chunk with the finish_reason
  (and `metrics`), a usage chunk with `choices: []` when asked, then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from llmpool.generation import GenerationRequest
from llmpool.job import Delta, Done, Job
from llmpool.pool import Pool
from llmpool.serving.api import Api, Call, Encoder
from llmpool.serving.openai_common import SAMPLING_KEYS, OpenAIChunks, finish_reason, usage


def completion_id(job: Job) -> str:
    return "cmpl-" + job.id.removeprefix("resp_")


def _head(job: Job) -> dict[str, Any]:
    return {"id": completion_id(job), "object": "text_completion", "created": job.created, "model": job.model}


def _choice(text: str, finish: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def _text(delta: Delta) -> str:
    # A raw prompt is answered unsplit; should a runtime still report reasoning, it is
    # part of the text the model wrote, in order, never dropped.
    return delta.reasoning + delta.text


class CompletionsApi(Api):
    name = "completions"

    def to_request(self, body: dict[str, Any], pool: Pool) -> GenerationRequest:
        decoding = {k: body[k] for k in (*SAMPLING_KEYS, "max_tokens")}
        return GenerationRequest(prompt=body["prompt"], decoding=pool.settings.decoding.requested(decoding))

    def answer(self, call: Call, done: Done) -> dict[str, Any]:
        job = call.job
        text = (done.reasoning_text or "") + done.output_text
        return {
            **_head(job),
            "choices": [_choice(text, finish_reason(done))],
            "usage": usage(done.final),
            "metrics": job.metrics(done.final),
        }

    def encoder(self, call: Call) -> Encoder:
        return CompletionChunks(call.job, call.body)


class CompletionChunks(OpenAIChunks):
    def __init__(self, job: Job, body: dict[str, Any]) -> None:
        super().__init__(job, body, _head(job))

    def delta(self, delta: Delta) -> Iterator[str]:
        if text := _text(delta):
            yield self.chunk(_choice(text, None))

    def done(self, done: Done) -> Iterator[str]:
        return self.finish(_choice("", finish_reason(done)), done)
