"""Where a job that waits for its model's load stands (`Waiting`), and the placer's own
bookkeeping for a model whose line waits for a load (`Pending`). The jobs themselves
stay in the model's line (llmpool.waiting_line); nothing here holds them."""

from __future__ import annotations

from dataclasses import dataclass

from llmpool.model import ModelEntry


@dataclass(eq=False)
class Pending:
    """A model with jobs in line that does not serve: the placer brings it up."""

    entry: ModelEntry  # the entry the load runs on (the current one at each pass)
    since: float  # monotonic: when the job now at the head of its line arrived
    loading: bool = False
    blocked: bool = False  # the placer found it does not fit (yet): it waits for memory
    load_started: float | None = None
    reserved_mib: float = 0.0

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def jobs(self) -> int:
        return self.entry.line.qsize()


@dataclass(frozen=True)
class Waiting:
    """Where a job that waits for its model stands (rendered by the HTTP layer)."""

    kind: str  # "loading" | "memory" | "queued" (Pool.where)
    model: str
    elapsed_s: float
    estimate_s: float | None = None  # the model's last load took this long
    place: int = 0  # memory: this model's place among the loads waiting on its device; queued: in line
