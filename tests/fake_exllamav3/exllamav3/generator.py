"""Generator, Job and samplers (real: exllamav3/generator/generator.py, job.py, sampler/).

The scripted model replies with its config's `fake_reply` one character per token, then
EOS, whatever the sampler says. Job handling follows the real Job: stop tokens end the job
without emitting them, stop strings are held back while they may still complete and never
streamed, `max_new_tokens` ends with `eos_reason` "max_new_tokens", and every streaming step
returns a result dict even when its text is held.
"""

from __future__ import annotations

import time
from typing import Any

from .log import record
from .tokenizer import OFFSET

PAGE_SIZE = 256


class DefaultSampler:
    """What a Job samples with when given no sampler (the fake's reply ignores it)."""


class ComboSampler:
    def __init__(
        self,
        rep_p: float = 1.0,
        freq_p: float = 0.0,
        pres_p: float = 0.0,
        rep_sustain_range: int = int(10e7),
        rep_decay_range: int = 0,
        temperature: float = 1.0,
        min_p: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        temp_last: bool = False,
        adaptive_target: float = 1.0,
        adaptive_decay: float = 0.9,
        logit_bias: dict[int, float] | None = None,
    ) -> None:
        self.params = {
            "rep_p": rep_p,
            "temperature": temperature,
            "min_p": min_p,
            "top_k": top_k,
            "top_p": top_p,
        }
        record("ComboSampler", **self.params)


class Job:
    def __init__(
        self,
        input_ids: Any,
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
        max_skips: int | None = 4,
        sampler: Any = None,
        seed: int | None = None,
        stop_conditions: list[Any] | tuple[Any, ...] | set[Any] | None = None,
        decode_special_tokens: bool = False,
        return_top_tokens: int = 0,
        return_logits: bool = False,
        return_probs: bool = False,
        filters: list[Any] | None = None,
        token_healing: bool = False,
        identifier: object | None = None,
        banned_strings: list[str] | None = None,
        embeddings: list[Any] | None = None,
        max_rq_tokens: int | None = None,
        stop_on_loop: tuple[int, int] | None = None,
        rq_state: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        assert input_ids.device.type == "cpu", "input_ids must reside in system memory"
        assert input_ids.shape[0] == 1, (
            "input_ids must be [1, seq_len] tensor or list of [1, seq_len] tensors"
        )
        assert input_ids.shape[-1] > 0, "Input IDs cannot be empty."
        self.input_ids = input_ids
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler or DefaultSampler()
        conditions = list(stop_conditions or [])
        self.stop_tokens = {c for c in conditions if isinstance(c, int)}
        self.stop_strings = [c for c in conditions if isinstance(c, str)]
        self.identifier = identifier
        self.max_rq_tokens = max_rq_tokens
        self.serial_number: int | None = None
        self.generator: Generator | None = None
        self.new_tokens = 0
        self.held_text = ""
        self.full_completion = ""
        self.time_enqueue = 0.0
        record(
            "Job",
            max_new_tokens=max_new_tokens,
            stop_conditions=conditions,
            sampler=self.sampler,
            identifier=identifier,
            max_rq_tokens=max_rq_tokens,
        )

    def prepare_for_queue(self, generator: Generator, serial_number: int) -> None:
        need = self.input_ids.shape[-1] + (self.max_new_tokens or 0)
        assert need <= generator.cache.max_num_tokens, (
            f"Job requires {need} tokens, cache holds {generator.cache.max_num_tokens}"
        )
        self.generator = generator
        self.serial_number = serial_number
        self.time_enqueue = time.time()

    def _result(self, stage: str, **extra: Any) -> dict[str, Any]:
        r: dict[str, Any] = {"job": self, "stage": stage, "eos": False, "serial": self.serial_number, **extra}
        if self.identifier is not None:
            r["identifier"] = self.identifier
        return r

    def step(self, token: int) -> dict[str, Any]:
        """Accept one sampled token and return its streaming result (Job.receive_sample)."""
        assert self.generator is not None
        self.new_tokens += 1
        if token in self.stop_tokens:
            return self._end({}, "stop_token", eos_triggering_token_id=token)
        self.held_text += self.generator.tokenizer.piece(token)
        if self.max_new_tokens is not None and self.new_tokens >= self.max_new_tokens:
            return self._end(self._release(), "max_new_tokens")
        for s in self.stop_strings:
            at = self.held_text.find(s)
            if at >= 0:
                self.held_text = self.held_text[:at]
                return self._end(self._release(), "stop_string", eos_triggering_string=s)
        if any(self.held_text.endswith(s[:i]) for s in self.stop_strings for i in range(1, len(s))):
            return self._result("streaming")  # may be the start of a stop string: hold
        return self._result("streaming", **self._release())

    def _release(self) -> dict[str, Any]:
        text, self.held_text = self.held_text, ""
        self.full_completion += text
        return {"text": text} if text else {}

    def _end(self, text: dict[str, Any], reason: str, **extra: Any) -> dict[str, Any]:
        r = self._result("streaming", **text, eos_reason=reason, **extra)
        r.update(
            eos=True,
            full_completion=self.full_completion,
            new_tokens=self.new_tokens,
            prompt_tokens=self.input_ids.shape[-1],
            time_enqueued=0.0,
            time_prefill=0.0,
            time_generate=time.time() - self.time_enqueue,
            cached_pages=0,
            cached_tokens=0,
        )
        return r


class Generator:
    def __init__(
        self,
        model: Any,
        cache: Any,
        tokenizer: Any,
        max_batch_size: int = 256,
        max_chunk_size: int = 2048,
        max_q_size: int = 8,
        draft_model: Any = None,
        draft_cache: Any = None,
        num_draft_tokens: int | None = None,
        show_visualizer: bool = False,
        **kwargs: Any,
    ) -> None:
        assert model.loaded, "model must be loaded"
        self.model = model
        self.cache = cache
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.pending_jobs: list[Job] = []
        self.active_jobs: list[Job] = []
        self.cancelled: list[Job] = []  # fake only: what cancel() removed
        self.job_serial = 0
        record(
            "Generator",
            generator=self,
            max_batch_size=max_batch_size,
            max_chunk_size=max_chunk_size,
            max_q_size=max_q_size,
        )

    def num_remaining_jobs(self) -> int:
        return len(self.pending_jobs) + len(self.active_jobs)

    def num_active_jobs(self) -> int:
        return len(self.active_jobs)

    def num_pending_jobs(self) -> int:
        return len(self.pending_jobs)

    def clear_queue(self) -> None:
        self.active_jobs.clear()
        self.pending_jobs.clear()

    def enqueue(self, job: Job | list[Job]) -> int | list[int]:
        if isinstance(job, list):
            return [self.enqueue(j) for j in job]  # type: ignore[misc]
        job.prepare_for_queue(self, self.job_serial)
        self.job_serial += 1
        self.pending_jobs.append(job)
        assert job.serial_number is not None
        return job.serial_number

    def cancel(self, job: Job) -> None:
        if job in self.pending_jobs:
            self.pending_jobs.remove(job)
        elif job in self.active_jobs:
            self.active_jobs.remove(job)
        self.cancelled.append(job)

    def iterate(self) -> list[dict[str, Any]]:
        """One step: start pending jobs (prefill in one chunk), then one token per active job."""
        results: list[dict[str, Any]] = []
        while self.pending_jobs and len(self.active_jobs) < self.max_batch_size:
            job = self.pending_jobs.pop(0)
            self.active_jobs.append(job)
            n = job.input_ids.shape[-1]
            results.append(job._result("started"))
            results.append(job._result("prefill", curr_progress=n, max_progress=n))
        delay = self.model.config.token_delay_s
        if delay and self.active_jobs:
            time.sleep(delay)
        for job in list(self.active_jobs):
            result = job.step(self._next_token(job))
            results.append(result)
            if result["eos"]:
                self.active_jobs.remove(job)
        return results

    def _next_token(self, job: Job) -> int:
        reply = self.model.config.reply
        if job.new_tokens < len(reply):
            return ord(reply[job.new_tokens]) + OFFSET
        return int(self.tokenizer.eos_token_id)
