"""The job's status machine: one writer, a transition table, terminal means terminal."""

from __future__ import annotations

import time

import pytest

from llmpool.errors import BackendError, ModelUnloading
from llmpool.generation import Final, GenerationRequest
from llmpool.job import Done, Failed, IllegalJobTransition, Job, JobStatus
from llmpool.metrics import JobTimes
from tests.unit.test_executor import pending_events


def new_job() -> Job:
    now = time.monotonic()
    return Job(model="m", request=GenerationRequest(input="hi"), times=JobTimes(now, now))


def test_a_done_job_cannot_be_failed_or_cancelled_afterwards() -> None:
    job = new_job()
    job.start(0)
    job.finish(Final(finish_reason="stop"), None)
    assert job.status is JobStatus.DONE and job.finished
    for late in (lambda: job.drop(None), lambda: job.drop(BackendError("late")), lambda: job.start(1)):
        with pytest.raises(IllegalJobTransition):
            late()
    assert job.status is JobStatus.DONE
    assert [type(e) for e in pending_events(job)] == [Done]


def test_a_cancelled_job_is_never_overwritten_by_a_failure() -> None:
    job = new_job()
    job.drop(None)  # the client left while it was queued
    assert job.status is JobStatus.CANCELLED
    with pytest.raises(IllegalJobTransition):
        job.drop(ModelUnloading("unloading"))
    assert job.status is JobStatus.CANCELLED
    assert pending_events(job) == []  # nobody listens: no event at all


def test_the_first_stop_reason_wins_and_beats_the_runtimes_own_outcome() -> None:
    job = new_job()
    job.start(0)
    first = ModelUnloading("unloading")
    job.request_stop(first)
    job.request_stop(None)  # a client leaving afterwards changes nothing
    job.finish(Final(finish_reason="stop"), BackendError("the runtime also failed"))
    assert job.status is JobStatus.FAILED
    (event,) = pending_events(job)
    assert isinstance(event, Failed) and event.error is first


def test_a_running_job_stopped_by_its_client_ends_cancelled_without_an_event() -> None:
    job = new_job()
    job.start(0)
    job.emit_delta("a", "")
    job.request_stop(None)
    job.finish(None, None)
    assert job.status is JobStatus.CANCELLED
    assert job.times.finished is not None
    assert len(pending_events(job)) == 1  # only the delta
