"""What an API is to the serving pipeline (`llmpool.serving.pipeline`).

An `Api` maps its parsed body to the core's `GenerationRequest` (refusing, with a 400
naming the field, what it cannot honour) and builds the JSON answer of a finished job; its
`Encoder` turns one job's events into the API's stream text. Everything else (admission,
the allow_remote gate, waiting, hang-ups, cancelling, the waiting comments) is the
pipeline's, so an API module holds only its shapes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from llmpool.errors import PoolError, bug
from llmpool.generation import GenerationRequest
from llmpool.job import Delta, Done, Job
from llmpool.pool import Pool


@dataclass(frozen=True)
class Call:
    """One admitted request: its API, its parsed body, the core's request and the job."""

    api: Api
    body: dict[str, Any]
    request: GenerationRequest
    job: Job

    @property
    def streaming(self) -> bool:
        return bool(self.body["stream"])


class Encoder(ABC):
    """One stream's events as text, in order: `open()`, then `delta()` per backend delta,
    then `done()` or `failed()`. Not thread-safe; one per stream."""

    def open(self) -> Iterable[str]:
        return ()

    @abstractmethod
    def delta(self, delta: Delta) -> Iterable[str]: ...

    @abstractmethod
    def done(self, done: Done) -> Iterable[str]: ...

    @abstractmethod
    def failed(self, error: PoolError) -> str:
        """The last text of a stream whose job failed after the status line went out."""

    def broken(self) -> str:
        """The last text of a stream that a bug broke: nothing of the bug but that it happened."""
        return self.failed(bug())


class Api(ABC):
    name: str

    @abstractmethod
    def to_request(self, body: dict[str, Any], pool: Pool) -> GenerationRequest:
        """The core's request; raises InvalidParam for what the API cannot honour."""

    @abstractmethod
    def answer(self, call: Call, done: Done) -> dict[str, Any]:
        """The JSON answer of a finished job."""

    @abstractmethod
    def encoder(self, call: Call) -> Encoder: ...
