"""The per-request metrics payload: every key always present, None where unknown.

Timers nest: pool_total ⊇ engine_total (queue wait + scheduling + backend) ⊇
backend_inference. `engine_outside_backend_wall_ms` is the scheduler's own share:
engine_total minus queue wait minus backend inference.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmpool.generation import Final

METRIC_KEYS = (
    "pool_total_wall_ms",
    "engine_total_wall_ms",
    "backend_inference_wall_ms",
    "engine_queue_wait_ms",
    "engine_outside_backend_wall_ms",
    "engine_tokenize_ms",
    "gpu_time_to_first_token_ms",
    "gpu_generate_total_ms",
    "gpu_decode_after_first_token_ms",
    "engine_prompt_tokens",
    "engine_output_tokens",
    "engine_tokens_per_second",
    "replica",
)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@dataclass
class JobTimes:
    """Monotonic timestamps (seconds) taken by the scheduler for one job."""

    pool_started: float
    enqueued: float
    started: float | None = None  # slot acquired
    backend_started: float | None = None
    backend_finished: float | None = None
    finished: float | None = None


def build_metrics(
    times: JobTimes, final: Final | None, replica: int | None, now: float
) -> dict[str, float | int | None]:
    """Compose the payload; `now` is when the handler measures pool_total."""
    out: dict[str, float | int | None] = dict.fromkeys(METRIC_KEYS)
    out["pool_total_wall_ms"] = _ms(now - times.pool_started)
    out["replica"] = replica
    end = times.finished if times.finished is not None else now
    out["engine_total_wall_ms"] = _ms(end - times.enqueued)
    if times.started is not None:
        out["engine_queue_wait_ms"] = _ms(times.started - times.enqueued)
    if times.backend_started is not None and times.backend_finished is not None:
        backend = times.backend_finished - times.backend_started
        out["backend_inference_wall_ms"] = _ms(backend)
        if times.started is not None:
            queue_wait = times.started - times.enqueued
            out["engine_outside_backend_wall_ms"] = _ms(
                max(0.0, (end - times.enqueued) - queue_wait - backend)
            )
    if final is not None:
        out["engine_tokenize_ms"] = final.tokenize_ms
        out["gpu_time_to_first_token_ms"] = final.time_to_first_token_ms
        out["gpu_generate_total_ms"] = final.generate_total_ms
        if final.generate_total_ms is not None and final.time_to_first_token_ms is not None:
            out["gpu_decode_after_first_token_ms"] = round(
                final.generate_total_ms - final.time_to_first_token_ms, 3
            )
        out["engine_prompt_tokens"] = final.prompt_tokens
        out["engine_output_tokens"] = final.output_tokens
        if final.output_tokens is not None and final.generate_total_ms:
            out["engine_tokens_per_second"] = round(
                final.output_tokens / (final.generate_total_ms / 1000.0), 2
            )
    return out
