"""The scheduler through the Pool, driven by the scripted backend on plain threads.

Long jobs (1000 tokens at 10 ms) never run to the end: tests cancel them, and the
`make_pool` fixture force-unloads every pool it built.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmpool.config.loader import load_settings
from llmpool.errors import (
    InvalidLoadRequest,
    ModalityUnsupported,
    ModelFailed,
    ModelLoadFailed,
    ModelLoading,
    ModelNotLoaded,
    ModelUnloading,
    QueueFull,
    RequestFieldInvalid,
    ThinkingUnsupported,
    UnknownModel,
)
from llmpool.executor import Executor
from llmpool.generation import GenerationRequest
from llmpool.greenbridge import ChannelTimeout
from llmpool.job import Delta, Done, Event, Failed, Job, JobStatus
from llmpool.metrics import METRIC_KEYS
from llmpool.pool import Pool
from llmpool.states import ModelState
from tests.fakes import ScriptedAdapter, scripted_model

LONG = 1000  # tokens: ~10 s at the default 10 ms per token, always cancelled


@pytest.fixture
def make_pool(write_settings: Callable[..., Path]) -> Iterator[Callable[..., Pool]]:
    pools: list[Pool] = []

    def make(**definitions: dict[str, Any]) -> Pool:
        write_settings({"engine": {"models": definitions}})
        pool = Pool(load_settings())
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown()


def loaded(make_pool: Callable[..., Pool], **options: Any) -> Pool:
    """A pool with one loaded scripted model called "m"."""
    pool = make_pool(m=scripted_model(**options))
    pool.load("m")
    return pool


def request(
    pool: Pool, *, input: Any = "hi", thinking: str = "default", **decoding: Any
) -> GenerationRequest:
    return GenerationRequest(input=input, thinking=thinking, decoding=pool.settings.decoding.merged(decoding))


def executor(pool: Pool, name: str = "m") -> Executor:
    ex = pool.models[name].executor
    assert ex is not None
    return ex


def line_length(pool: Pool, name: str = "m") -> int:
    """Jobs in the model's line while it serves (its admin row's queue_depth)."""
    return pool.models[name].waiting()[0]


def runtimes(pool: Pool, name: str = "m") -> list[ScriptedAdapter]:
    out = []
    for replica in executor(pool, name).replicas:
        assert isinstance(replica.runtime, ScriptedAdapter)
        out.append(replica.runtime)
    return out


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def running(job: Job) -> bool:
    return wait_until(lambda: job.status is JobStatus.RUNNING)


def collect(job: Job, timeout: float = 5.0) -> tuple[list[Delta], Done | Failed]:
    """Every delta, then the terminal event; fails the test if none arrives in time."""
    deltas: list[Delta] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            event: Event = job.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except ChannelTimeout:
            pytest.fail(f"job {job.id} sent no terminal event within {timeout}s")
        if isinstance(event, Delta):
            deltas.append(event)
        else:
            return deltas, event


def pending_events(job: Job) -> list[Event]:
    out = []
    while True:
        try:
            out.append(job.events.get(timeout=0))
        except ChannelTimeout:
            return out


# -- a job's life ----------------------------------------------------------------------
def test_job_streams_deltas_then_done(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=3)
    job = pool.submit("m", request(pool))
    deltas, end = collect(job)
    assert [d.text for d in deltas] == ["t0 ", "t1 ", "t2 "]
    assert isinstance(end, Done)
    assert end.output_text == "t0 t1 t2 "
    assert end.reasoning_text is None
    assert end.finish_reason == "length"
    assert job.status is JobStatus.DONE
    assert job.replica == 0


def test_done_job_metrics_have_every_key_and_nest(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=3)
    job = pool.submit("m", request(pool), pool_started=time.monotonic() - 0.005)
    _, end = collect(job)
    assert isinstance(end, Done)
    metrics = job.metrics(end.final)
    assert set(metrics) == set(METRIC_KEYS)
    assert metrics["engine_queue_wait_ms"] is not None
    assert metrics["backend_inference_wall_ms"] is not None
    assert metrics["engine_outside_backend_wall_ms"] is not None
    pool_total = metrics["pool_total_wall_ms"]
    engine_total = metrics["engine_total_wall_ms"]
    backend = metrics["backend_inference_wall_ms"]
    assert isinstance(pool_total, float) and isinstance(engine_total, float) and isinstance(backend, float)
    assert pool_total >= engine_total >= backend > 0
    assert backend >= 3 * 10 * 0.9  # three tokens at ~10 ms each
    assert metrics["engine_output_tokens"] == 3
    assert metrics["engine_prompt_tokens"] == 3
    assert metrics["replica"] == 0


def test_max_tokens_caps_the_scripted_output(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=10)
    deltas, end = collect(pool.submit("m", request(pool, max_tokens=2)))
    assert len(deltas) == 2
    assert isinstance(end, Done)


# -- queue -----------------------------------------------------------------------------
def test_fifo_order_with_one_replica_and_one_slot(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=2, scripted_delay_s=0.005)
    jobs = [pool.submit("m", request(pool)) for _ in range(5)]
    for job in jobs:
        _, end = collect(job)
        assert isinstance(end, Done)
    starts = [job.times.started for job in jobs]
    assert all(s is not None for s in starts)
    assert starts == sorted(s for s in starts if s is not None)
    for earlier, later in zip(jobs, jobs[1:], strict=False):
        # one slot: the next job gets it only after the previous one finished
        assert later.times.started is not None and earlier.times.finished is not None
        assert later.times.started >= earlier.times.finished


def test_a_job_with_a_free_slot_and_nobody_ahead_starts_in_submit(make_pool: Callable[..., Pool]) -> None:
    # The submitter starts it under the line's mutex (Executor.take_now): no hop through
    # the dispatcher thread. The next one finds the only slot taken and waits in line.
    pool = loaded(make_pool, scripted_tokens=LONG)
    first = pool.submit("m", request(pool))
    assert first.status is JobStatus.RUNNING and first.replica is not None
    second = pool.submit("m", request(pool))
    assert second.status is JobStatus.QUEUED and line_length(pool) == 1
    pool.cancel(first)
    assert running(second)  # the dispatcher starts what had to wait


def test_target_inflight_slots_run_concurrently_on_one_replica(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, target_inflight=3, scripted_tokens=LONG)
    jobs = [pool.submit("m", request(pool)) for _ in range(4)]
    (runtime,) = runtimes(pool)
    assert wait_until(lambda: runtime.active == 3)
    assert executor(pool).inflight == 3
    assert line_length(pool) == 1
    assert [j.status for j in jobs] == [JobStatus.RUNNING] * 3 + [JobStatus.QUEUED]
    time.sleep(0.03)
    assert runtime.active == 3  # never more than the slots


def test_position_is_the_one_based_place_in_line(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=LONG)
    first = pool.submit("m", request(pool))
    assert running(first)
    waiting = [pool.submit("m", request(pool)) for _ in range(3)]
    assert pool.position(first) == 0  # running: no longer in line
    assert [pool.position(j) for j in waiting] == [1, 2, 3]
    pool.cancel(waiting[0])
    assert [pool.position(j) for j in waiting] == [0, 1, 2]


def test_queue_full_raises_429_with_retry_after_and_takes_no_place(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, max_queue=2, scripted_tokens=LONG)
    first = pool.submit("m", request(pool))
    assert running(first)
    assert line_length(pool) == 0  # the running job is not waiting
    waiting = [pool.submit("m", request(pool)) for _ in range(2)]
    assert line_length(pool) == 2
    with pytest.raises(QueueFull) as info:
        pool.submit("m", request(pool))
    assert info.value.status == 429
    assert info.value.code == "queue_full"
    assert "Retry-After" in info.value.headers
    assert int(info.value.headers["Retry-After"]) >= 1
    assert line_length(pool) == 2
    assert [pool.position(j) for j in waiting] == [1, 2]


def test_cancelled_queued_job_frees_its_place_in_the_queue(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, max_queue=1, scripted_tokens=LONG)
    assert running(pool.submit("m", request(pool)))
    queued = pool.submit("m", request(pool))
    with pytest.raises(QueueFull):
        pool.submit("m", request(pool))
    pool.cancel(queued)
    again = pool.submit("m", request(pool))
    assert pool.position(again) == 1


def test_jobs_cancelled_while_queued_leave_the_fifo_too(make_pool: Callable[..., Pool]) -> None:
    # Clients that connect and drop while the only slot is busy must not pile up in the
    # dispatcher's FIFO (each would keep its request) beyond the max_queue bound.
    pool = loaded(make_pool, max_queue=2, scripted_tokens=LONG)
    assert running(pool.submit("m", request(pool)))
    for _ in range(50):
        pool.cancel(pool.submit("m", request(pool)))
    assert line_length(pool) == 0
    assert pool.models["m"].line.qsize() == 0


def test_places_in_line_follow_every_change(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, max_queue=100, scripted_tokens=LONG)
    assert running(pool.submit("m", request(pool)))
    waiting = [pool.submit("m", request(pool)) for _ in range(6)]
    assert [pool.position(j) for j in waiting] == [1, 2, 3, 4, 5, 6]
    pool.cancel(waiting[2])
    pool.cancel(waiting[4])
    late = pool.submit("m", request(pool))
    assert [pool.position(j) for j in [*waiting, late]] == [1, 2, 0, 3, 0, 4, 5]


# -- replica choice --------------------------------------------------------------------
def test_ties_go_round_robin_across_replicas(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, replicas=2, target_inflight=2, scripted_tokens=LONG)
    jobs = [pool.submit("m", request(pool)) for _ in range(4)]
    assert all(running(j) for j in jobs)
    assert [j.replica for j in jobs] == [0, 1, 0, 1]
    assert [r.inflight for r in executor(pool).replicas] == [2, 2]


def test_least_busy_replica_is_chosen_before_round_robin(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, replicas=2, target_inflight=3, scripted_tokens=LONG)
    long_job = pool.submit("m", request(pool))
    short_job = pool.submit("m", request(pool, max_tokens=1))
    _, end = collect(short_job)
    assert isinstance(end, Done)
    assert (long_job.replica, short_job.replica) == (0, 1)
    replicas = executor(pool).replicas
    assert wait_until(lambda: replicas[1].inflight == 0)
    # Round-robin alone would now pick replica 0; it is busier, so replica 1 wins.
    nxt = pool.submit("m", request(pool))
    assert running(nxt)
    assert nxt.replica == 1


def test_job_waits_for_a_slot_when_every_replica_is_full(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, replicas=2, scripted_tokens=LONG)
    a, b = pool.submit("m", request(pool)), pool.submit("m", request(pool))
    assert running(a) and running(b)
    c = pool.submit("m", request(pool))
    time.sleep(0.03)
    assert c.status is JobStatus.QUEUED
    pool.cancel(b)
    assert running(c)
    assert c.replica == b.replica


# -- cancellation ----------------------------------------------------------------------
def test_cancel_of_a_queued_job_drops_it_before_the_runtime(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=3)
    (runtime,) = runtimes(pool)
    first = pool.submit("m", request(pool))
    assert running(first)
    queued = pool.submit("m", request(pool))
    assert line_length(pool) == 1
    pool.cancel(queued)
    assert line_length(pool) == 0
    assert pool.position(queued) == 0
    assert queued.status is JobStatus.CANCELLED
    # A later job runs after the first: had the cancelled one reached the runtime, it
    # would have run in between (FIFO).
    later = pool.submit("m", request(pool))
    assert isinstance(collect(first)[1], Done)
    assert isinstance(collect(later)[1], Done)
    assert runtime.generations == 2
    assert pending_events(queued) == []
    assert queued.replica is None


def test_cancel_of_a_running_job_stops_it_at_the_next_token(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=LONG)
    (runtime,) = runtimes(pool)
    job = pool.submit("m", request(pool))
    assert isinstance(job.events.get(timeout=2), Delta)
    cancelled_at = time.monotonic()
    pool.cancel(job)
    assert wait_until(lambda: executor(pool).inflight == 0, timeout=1.0)
    assert time.monotonic() - cancelled_at < 0.5
    assert wait_until(lambda: job.status is JobStatus.CANCELLED, timeout=0.5)
    emitted = runtime.tokens_emitted
    time.sleep(0.05)
    assert runtime.tokens_emitted == emitted < 50
    assert runtime.active == 0  # the generator was closed, its finally ran
    # Nobody listens to a cancelled client's job: no Done, no Failed.
    assert all(isinstance(e, Delta) for e in pending_events(job))


def test_cancel_of_a_running_job_frees_its_slot_for_the_next(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=LONG)
    first = pool.submit("m", request(pool))
    assert running(first)
    second = pool.submit("m", request(pool, max_tokens=2))
    pool.cancel(first)
    _, end = collect(second, timeout=1.0)
    assert isinstance(end, Done)


# -- unload ----------------------------------------------------------------------------
def test_unload_fails_queued_jobs_and_lets_running_ones_finish(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=10, unload_timeout_s=5)
    (runtime,) = runtimes(pool)
    first = pool.submit("m", request(pool))
    assert running(first)
    queued = [pool.submit("m", request(pool)) for _ in range(2)]
    started = time.monotonic()
    entry = pool.unload("m")
    assert time.monotonic() - started < 2.0  # finished with the job, not the timeout
    deltas, end = collect(first)
    assert isinstance(end, Done)
    assert len(deltas) == 10
    for job in queued:
        _, end = collect(job)
        assert isinstance(end, Failed)
        assert isinstance(end.error, ModelUnloading)
        assert end.error.code == "model_unloading"
    assert entry.state is ModelState.UNLOADED
    assert entry.executor is None
    assert runtime.closed is True
    assert runtime.generations == 1


def test_submit_after_unload_is_model_not_loaded(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool)
    pool.unload("m")
    with pytest.raises(ModelNotLoaded):
        pool.submit("m", request(pool))


def test_unload_stops_running_jobs_after_unload_timeout(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=LONG, unload_timeout_s=0.1)
    (runtime,) = runtimes(pool)
    job = pool.submit("m", request(pool))
    assert running(job)
    started = time.monotonic()
    pool.unload("m")
    took = time.monotonic() - started
    assert 0.1 <= took < 1.0
    deltas, end = collect(job)
    assert 0 < len(deltas) < 50
    assert isinstance(end, Failed)
    assert isinstance(end.error, ModelUnloading)
    assert pool.models["m"].state is ModelState.UNLOADED
    assert runtime.closed is True
    assert runtime.active == 0


def test_forced_unload_cancels_running_jobs_at_once(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=LONG, unload_timeout_s=30)
    rts = runtimes(pool)
    job = pool.submit("m", request(pool))
    assert running(job)
    started = time.monotonic()
    pool.unload("m", force=True)
    assert time.monotonic() - started < 0.5
    _, end = collect(job)
    assert isinstance(end, Failed)
    assert isinstance(end.error, ModelUnloading)
    assert pool.models["m"].state is ModelState.UNLOADED
    assert all(r.closed for r in rts)


def test_unloading_model_refuses_new_jobs(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=30, unload_timeout_s=5)
    job = pool.submit("m", request(pool))
    assert running(job)
    unloader = threading.Thread(target=pool.unload, args=("m",))
    unloader.start()
    try:
        assert wait_until(lambda: pool.models["m"].state is ModelState.UNLOADING)
        with pytest.raises(ModelUnloading):
            pool.submit("m", request(pool))
    finally:
        unloader.join(timeout=5)
    assert isinstance(collect(job)[1], Done)


def test_client_cancel_during_unload_stops_the_running_job(make_pool: Callable[..., Pool]) -> None:
    # A client that disconnects while the model drains must still free its slot at the
    # next token (SPEC §3), not keep generating until unload_timeout_s runs out.
    pool = loaded(make_pool, scripted_tokens=LONG, unload_timeout_s=1.5)
    (runtime,) = runtimes(pool)
    job = pool.submit("m", request(pool))
    assert running(job)
    unloader = threading.Thread(target=pool.unload, args=("m",))
    unloader.start()
    try:
        entry = pool.models["m"]
        # Draining: the unload is in progress and waiting on the running job.
        assert wait_until(lambda: entry.state is ModelState.UNLOADING)
        time.sleep(0.05)  # let the unload get well into its drain
        pool.cancel(job)
        assert wait_until(lambda: runtime.active == 0, timeout=0.5), "cancel was ignored during unload"
    finally:
        unloader.join(timeout=5)


# -- load ------------------------------------------------------------------------------
def test_load_brings_up_every_replica(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(m=scripted_model(replicas=2, target_inflight=2))
    entry = pool.load("m")
    assert entry.state is ModelState.LOADED
    assert entry.last_error is None
    rts = runtimes(pool)
    assert [r.replica_id for r in rts] == [0, 1]
    assert all(r.loaded and not r.closed for r in rts)
    assert [r.slots for r in executor(pool).replicas] == [2, 2]
    assert pool.loaded_ids() == ["m"]


def test_load_is_all_or_nothing(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(m=scripted_model(replicas=2, scripted_fail_load=True))
    before = len(ScriptedAdapter.instances)
    with pytest.raises(ModelLoadFailed) as info:
        pool.load("m")
    assert info.value.code == "model_load_failed"
    entry = pool.models["m"]
    assert entry.state is ModelState.FAILED
    assert entry.last_error is not None and "refused" in entry.last_error
    assert entry.executor is None
    created = ScriptedAdapter.instances[before:]
    assert [r.replica_id for r in created] == [0, 1]
    assert created[0].loaded is True
    assert created[0].closed is True  # the replica that came up was torn down
    with pytest.raises(ModelFailed):
        pool.submit("m", request(pool))


def test_failed_model_can_be_retried(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(m=scripted_model(replicas=2, scripted_fail_load=True))
    with pytest.raises(ModelLoadFailed):
        pool.load("m")
    entry = pool.load("m", replicas=1, has_body=True)  # only replica 1 refuses to start
    assert entry.state is ModelState.LOADED
    assert entry.last_error is None


@pytest.mark.parametrize(
    "body",
    [
        {"overrides": {"no_such_key": 1}},
        {"overrides": {"scripted_tokens": 0}},
        {"overrides": {"scripted_tokens": "5"}},
        {"replicas": 3},
        {"replicas": 0},
        {"target_inflight": 0},
    ],
    ids=[
        "unknown-override",
        "override-below-min",
        "override-wrong-type",
        "above-replica-max",
        "zero-replicas",
        "zero-inflight",
    ],
)
def test_bad_load_request_leaves_the_state_untouched(
    make_pool: Callable[..., Pool], body: dict[str, Any]
) -> None:
    pool = make_pool(m=scripted_model(replicas=1, replica_max=2))
    before = len(ScriptedAdapter.instances)
    with pytest.raises(InvalidLoadRequest) as info:
        pool.load("m", has_body=True, **body)
    assert info.value.status == 400
    assert info.value.code == "invalid_load_request"
    entry = pool.models["m"]
    assert entry.state is ModelState.UNLOADED
    assert entry.load_override is None
    assert entry.last_error is None
    assert len(ScriptedAdapter.instances) == before  # no runtime was even built


def test_load_override_applies_until_unload(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(m=scripted_model(scripted_tokens=5))
    pool.load("m", overrides={"scripted_tokens": 2}, has_body=True)
    deltas, _ = collect(pool.submit("m", request(pool)))
    assert len(deltas) == 2
    pool.unload("m")
    pool.load("m")
    deltas, _ = collect(pool.submit("m", request(pool)))
    assert len(deltas) == 5


def test_load_of_a_loaded_model_with_a_body_is_refused(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, replica_max=2)
    with pytest.raises(InvalidLoadRequest):
        pool.load("m", replicas=2, has_body=True)
    assert len(executor(pool).replicas) == 1


def test_load_of_a_loaded_model_without_a_body_returns_the_entry(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool)
    ex = executor(pool)
    entry = pool.load("m")
    assert entry is pool.models["m"]
    assert entry.state is ModelState.LOADED
    assert entry.executor is ex  # nothing was reloaded


def test_load_of_an_unknown_model(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(m=scripted_model())
    with pytest.raises(UnknownModel):
        pool.load("nope")


# -- admission -------------------------------------------------------------------------
IMAGE_INPUT = [
    {"type": "text", "text": "what is this?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]


def test_image_to_a_text_only_model_is_modality_unsupported(make_pool: Callable[..., Pool]) -> None:
    # The scripted runtime could take images; the configured modalities say no.
    pool = loaded(make_pool)
    with pytest.raises(ModalityUnsupported) as info:
        pool.submit("m", request(pool, input=IMAGE_INPUT))
    assert info.value.status == 400
    assert line_length(pool) == 0


def test_image_to_a_model_configured_for_images_is_admitted(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, modalities=["text", "image"], scripted_tokens=1)
    assert isinstance(collect(pool.submit("m", request(pool, input=IMAGE_INPUT)))[1], Done)


def test_thinking_mode_the_model_does_not_offer_is_rejected(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool)
    with pytest.raises(ThinkingUnsupported) as info:
        pool.submit("m", request(pool, thinking="enabled"))
    assert info.value.code == "thinking_unsupported"
    assert line_length(pool) == 0


def test_max_tokens_above_the_model_limit_is_a_field_error(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=1)
    with pytest.raises(RequestFieldInvalid) as info:
        pool.submit("m", request(pool, max_tokens=1001))
    assert info.value.status == 422
    assert info.value.loc == ["body", "decoding", "max_tokens"]
    assert "1000" in info.value.message
    assert isinstance(collect(pool.submit("m", request(pool, max_tokens=1000)))[1], Done)


def test_submit_to_an_unloaded_model_is_model_not_loaded(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(m=scripted_model())
    with pytest.raises(ModelNotLoaded) as info:
        pool.submit("m", request(pool))
    assert info.value.status == 409


def test_submit_to_an_unknown_model_is_unknown_model(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(m=scripted_model())
    with pytest.raises(UnknownModel) as info:
        pool.submit("nope", request(pool))
    assert info.value.status == 404
    assert info.value.model == "nope"


# -- replica death and errors ------------------------------------------------------------
def test_a_replica_dying_while_its_survivor_is_busy_does_not_fail_the_next_job(
    make_pool: Callable[..., Pool],
) -> None:
    # Replica 0 busy, replica 1 free, the dispatcher waiting; replica 1 dies. The next job
    # must wait for replica 0, not fail with model_failed while the model is loaded.
    pool = loaded(make_pool, replicas=2, scripted_tokens=LONG)
    busy = pool.submit("m", request(pool))
    assert running(busy) and busy.replica == 0
    pool.models["m"]._replica_failed(1, "replica 1 died")
    nxt = pool.submit("m", request(pool, max_tokens=2))
    time.sleep(0.05)
    assert nxt.status is JobStatus.QUEUED
    assert pool.models["m"].state is ModelState.LOADED
    pool.cancel(busy)
    _, end = collect(nxt)
    assert isinstance(end, Done)
    assert nxt.replica == 0


def test_a_job_in_the_dispatchers_hand_waits_for_the_survivor_when_a_busy_replica_dies(
    make_pool: Callable[..., Pool],
) -> None:
    pool = loaded(make_pool, replicas=2, scripted_tokens=LONG)
    a, b = pool.submit("m", request(pool)), pool.submit("m", request(pool))
    assert running(a) and running(b)
    c = pool.submit("m", request(pool, max_tokens=2))
    time.sleep(0.03)  # the dispatcher has taken c and waits for a slot
    pool.models["m"]._replica_failed(b.replica or 0, "replica died mid-job")
    _, b_end = collect(b)
    assert isinstance(b_end, Failed) and b_end.error.code == "backend_error"
    assert c.status is JobStatus.QUEUED  # still waiting: a survivor is alive
    pool.cancel(a)
    _, c_end = collect(c)
    assert isinstance(c_end, Done) and c.replica == a.replica


def test_the_last_replica_dying_fails_queued_jobs_with_model_failed(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=LONG)
    first = pool.submit("m", request(pool))
    assert running(first)
    queued = [pool.submit("m", request(pool)) for _ in range(3)]
    pool.models["m"]._replica_failed(0, "gone")
    for job in queued:
        _, end = collect(job)
        assert isinstance(end, Failed) and end.error.code == "model_failed"
    assert pool.models["m"].state is ModelState.FAILED


def test_a_queued_job_cancelled_by_its_client_leaves_no_trace(make_pool: Callable[..., Pool]) -> None:
    pool = loaded(make_pool, scripted_tokens=LONG)
    assert running(pool.submit("m", request(pool)))
    gone = []
    for _ in range(20):
        job = pool.submit("m", request(pool, input="x" * 100_000))
        pool.cancel(job)
        gone.append(weakref.ref(job))
    del job
    assert line_length(pool) == 0 and pool.models["m"].line.qsize() == 0
    gc.collect()
    assert all(ref() is None for ref in gone)  # nothing holds the job or its prompt


def test_a_bug_while_running_is_internal_error_and_a_runtime_failure_backend_error(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool(
        bug=scripted_model(scripted_tokens=5, scripted_bug_after=1),
        crash=scripted_model(scripted_tokens=5, scripted_fail_after=1),
    )
    pool.load("bug")
    pool.load("crash")
    _, bug = collect(pool.submit("bug", request(pool)))
    assert isinstance(bug, Failed)
    assert (bug.error.status, bug.error.code) == (500, "internal_error")
    assert "scripted bug" not in bug.error.message  # the trace goes to the log only
    _, crash = collect(pool.submit("crash", request(pool)))
    assert isinstance(crash, Failed)
    assert (crash.error.status, crash.error.code) == (502, "backend_error")
    # Both replicas survive and serve the next job.
    assert [r.inflight for r in executor(pool, "bug").replicas] == [0]


# -- load and unload are commands, decided as the model's writer ------------------------
def test_a_load_command_for_a_model_that_is_up_reports_it_and_refuses_new_settings(
    make_pool: Callable[..., Pool],
) -> None:
    pool = loaded(make_pool)
    entry = pool.models["m"]
    plan = entry.check_load_request(None, None, {})
    assert entry.begin_load(plan) is False and entry.state is ModelState.LOADED
    with pytest.raises(InvalidLoadRequest, match="unload it before loading with new settings"):
        entry.begin_load(plan, has_body=True)
    assert entry.begin_load(plan) is False  # the writer was released both times


def test_a_load_command_during_a_load_or_an_unload_is_decided_by_the_writer(
    make_pool: Callable[..., Pool],
) -> None:
    pool = make_pool(m=scripted_model(scripted_load_s=0.5, enabled=False))
    entry = pool.models["m"]
    plan = entry.check_load_request(None, None, {})
    loading = threading.Thread(target=pool.load, args=("m",))
    loading.start()
    deadline = time.monotonic() + 5
    while entry.state is not ModelState.LOADING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert entry.begin_load(plan) is False  # a load is under way: the same outcome
    with pytest.raises(ModelLoading):
        pool.unload("m")  # the admin's unload: 409 while loading
    loading.join()
    assert entry.state is ModelState.LOADED
    entry.unload(force=False)  # a plain unload waits for the writer and then unloads
    assert entry.state is ModelState.UNLOADED
