"""The jobs that wait for a model's load (`Demand`), and where one of them stands
(`Waiting`): the placer's bookkeeping, read by its admin view."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmpool.job import Job
from llmpool.model import ModelEntry


@dataclass(eq=False)
class Demand:
    entry: ModelEntry
    since: float  # monotonic: when its first job arrived
    jobs: list[Job] = field(default_factory=list)
    loading: bool = False
    cancelled: bool = False  # its load was told nobody waits any more
    blocked: bool = False  # the placer found it does not fit (yet): it waits for memory
    load_started: float | None = None
    reserved_mib: float = 0.0


@dataclass(frozen=True)
class Waiting:
    """Where a job that waits for its model stands (rendered by the HTTP layer)."""

    kind: str  # "loading" | "memory" | "queued" (Pool.where)
    model: str
    elapsed_s: float
    estimate_s: float | None = None  # the model's last load took this long
    place: int = 0  # memory: this model's place among the loads waiting on its device; queued: in line
