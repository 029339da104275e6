"""Prometheus metrics of one pool (`GET /metrics`), with `prometheus_client`.

Two kinds of figures:

- events, counted as they happen: requests (by endpoint, model, HTTP status and outcome
  code) and their latency, time to first token, tokens/s and pool overhead; tokens;
  loads and their duration; runtimes that died; queue-full rejections; cancellations;
- state, read from the pool at scrape time by `_StateCollector`: queue depth, in-flight
  jobs, model and replica states, and the Gateway API Inference Extension's model-server
  gauges (total queued, total running, KV-cache utilisation where a runtime reports it),
  named after vLLM's so an endpoint picker configured for vLLM reads them unchanged.

Each pool has its own registry (tests build many pools in one process). The `model` label
only ever holds a configured model's name: a name a client made up is recorded as ""
(an attacker must not be able to grow the registry one label value per request).
prometheus_client guards each metric with a real lock held for a few instructions; that
is the only real primitive a greenlet touches here, never contended for long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from llmpool.states import ModelState

if TYPE_CHECKING:
    from llmpool.model import ModelEntry

CONTENT_TYPE = CONTENT_TYPE_LATEST
NS = "llmpool"

_LATENCY_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFT_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOKENS_PER_S = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
_OVERHEAD_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_LOAD_S = (1, 5, 10, 30, 60, 120, 300, 600, 1200)


class Telemetry:
    def __init__(
        self,
        models: Callable[[], Mapping[str, ModelEntry]],
        worker_crashes: Callable[[], Mapping[tuple[str, str], int]] = dict,
    ) -> None:
        self._models = models
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, namespace=NS, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
            return Histogram(name, doc, labels, namespace=NS, registry=r, buckets=buckets)

        self.requests = counter("requests", "Finished HTTP requests.", "endpoint", "model", "status", "code")
        self.latency = histogram(
            "request_duration_seconds",
            "Whole request, as the pool's handler saw it (streams: until the last byte).",
            _LATENCY_S,
            "endpoint",
            "model",
        )
        self.ttft = histogram("time_to_first_token_seconds", "Backend time to first token.", _TTFT_S, "model")
        self.tokens_per_s = histogram(
            "tokens_per_second", "Output tokens per second of generation.", _TOKENS_PER_S, "model"
        )
        self.overhead = histogram(
            "pool_overhead_seconds",
            "Pool time minus backend time (queue wait included) of successful requests.",
            _OVERHEAD_S,
            "model",
        )
        self.output_tokens = counter("generated_tokens", "Output tokens.", "model")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens.", "model")
        self.loads = counter("model_loads", "Finished loads.", "model", "result")
        self.load_seconds = histogram("model_load_duration_seconds", "Successful loads.", _LOAD_S, "model")
        self.crashes = counter("runtime_crashes", "Runtimes that died on their own.", "model")
        self.queue_full = counter("queue_full_rejections", "Requests refused with 429 queue_full.", "model")
        self.cancellations = counter("cancellations", "Jobs cancelled unfinished.", "model", "reason")
        self.swaps = counter("model_swaps", "Models unloaded to make room for a load on demand (all models).")
        self.evictions = counter(
            "model_evictions", "Models the pool unloaded by itself (reason: memory, idle).", "model", "reason"
        )
        self.demand_loads = counter(
            "demand_loads", "Loads started by a request (load_on_demand).", "model", "result"
        )
        # labels() validates and locks on every call; each request makes about seven, so
        # the children are kept here by label values (a bounded set: see `model_label`).
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r.register(_StateCollector(models))
        r.register(_CrashCollector(worker_crashes))

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    def model_label(self, name: str | None) -> str:
        return name if name is not None and name in self._models() else ""

    # -- events ------------------------------------------------------------------------
    def request_finished(
        self,
        endpoint: str,
        model: str | None,
        status: int,
        code: str,
        duration_s: float,
        metrics: Mapping[str, Any] | None,
    ) -> None:
        label = self.model_label(model)
        self._child(self.requests, endpoint, label, str(status), code).inc()
        self._child(self.latency, endpoint, label).observe(duration_s)
        if code == "cancelled":
            self._child(self.cancellations, label, "client_gone").inc()
        if not metrics or not label:
            return
        if (ttft := metrics.get("gpu_time_to_first_token_ms")) is not None:
            self._child(self.ttft, label).observe(ttft / 1000.0)
        if (rate := metrics.get("engine_tokens_per_second")) is not None:
            self._child(self.tokens_per_s, label).observe(rate)
        if (out := metrics.get("engine_output_tokens")) is not None:
            self._child(self.output_tokens, label).inc(out)
        if (prompt := metrics.get("engine_prompt_tokens")) is not None:
            self._child(self.prompt_tokens, label).inc(prompt)
        total, backend = metrics.get("pool_total_wall_ms"), metrics.get("backend_inference_wall_ms")
        if code == "ok" and total is not None and backend is not None:
            self._child(self.overhead, label).observe(max(0.0, total - backend) / 1000.0)

    def load_finished(self, model: str, ok: bool, duration_s: float) -> None:
        self.loads.labels(model, "ok" if ok else "failed").inc()
        if ok:
            self.load_seconds.labels(model).observe(duration_s)

    def evicted(self, model: str, reason: str) -> None:
        self.evictions.labels(model, reason).inc()
        if reason == "memory":
            self.swaps.inc()

    def demand_load(self, model: str, result: str) -> None:
        self.demand_loads.labels(model, result).inc()

    def runtime_died(self, model: str) -> None:
        self.crashes.labels(model).inc()

    def rejected_queue_full(self, model: str) -> None:
        self.queue_full.labels(model).inc()

    def cancelled(self, model: str, reason: str) -> None:
        self.cancellations.labels(model, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _CrashCollector(Collector):
    """Workers that died inside a model's runtime, by model and signal, from the crash
    history in the state directory (llmpool.crashes): the worker that counted them in
    memory is the one that died, so the count lives in that file."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{NS}_worker_crashes",
            "Workers that died inside a model's runtime (signal 'unknown': no fault report, e.g. SIGKILL).",
            labels=["model", "signal"],
        )
        for (model, signal), n in sorted(self._counts().items()):
            family.add_metric([model, signal], n)
        yield family


class _StateCollector(Collector):
    """Gauges read from the pool at each scrape (nothing to keep in sync)."""

    def __init__(self, models: Callable[[], Mapping[str, ModelEntry]]) -> None:
        self._models = models

    def describe(self) -> Iterable[Metric]:
        return []  # unknown until collected; keeps auto_describe from collecting at register

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(f"{NS}_queue_depth", "Jobs waiting for a slot.", labels=["model"])
        for_load = GaugeMetricFamily(
            f"{NS}_waiting_for_load", "Jobs waiting for their model's load on demand.", labels=["model"]
        )
        inflight = GaugeMetricFamily(f"{NS}_inflight", "Jobs running on a replica.", labels=["model"])
        state = GaugeMetricFamily(
            f"{NS}_model_state", "1 for the model's current state.", labels=["model", "state"]
        )
        replicas = GaugeMetricFamily(
            f"{NS}_replica_state", "1 for each replica's current state.", labels=["model", "replica", "state"]
        )
        kv = GaugeMetricFamily(
            f"{NS}:kv_cache_usage_perc",
            "KV-cache utilisation (0-1), where the runtime reports it; the fullest replica.",
            labels=["model_name"],
        )
        counts: list[tuple[int, int, int]] = []
        for name, entry in list(self._models().items()):
            ex = entry.executor
            depth, loading, running = request_counts(entry)
            counts.append((depth, loading, running))
            for_load.add_metric([name], loading)
            queue.add_metric([name], depth)
            inflight.add_metric([name], running)
            for s in ModelState:
                state.add_metric([name, s.value], 1.0 if entry.state is s else 0.0)
            usages = []
            for replica in ex.replicas if ex else []:
                replicas.add_metric([name, str(replica.id), replica.state.value], 1.0)
                if (usage := replica.runtime.kv_cache_usage()) is not None:
                    usages.append(usage)
            if usages:
                kv.add_metric([name], max(usages))
        yield from (queue, for_load, inflight, state, replicas, kv)
        # The inference gateway's model-server protocol: TotalQueuedRequests and
        # TotalRunningRequests, under vLLM's names for them.
        waiting, running = totals(counts)
        yield GaugeMetricFamily(
            f"{NS}:num_requests_waiting", "Total jobs waiting, all models.", value=waiting
        )
        yield GaugeMetricFamily(
            f"{NS}:num_requests_running", "Total jobs running, all models.", value=running
        )


def request_counts(entry: ModelEntry) -> tuple[int, int, int]:
    """A model's jobs: (queued for a slot, waiting for its load on demand, running)."""
    depth, loading = entry.waiting()
    return depth, loading, entry.executor.inflight if entry.executor else 0


def request_totals(models: Mapping[str, ModelEntry]) -> tuple[int, int]:
    """(waiting, running) jobs over every model, as the `num_requests_*` gauges count
    them: waiting is the jobs queued for a slot plus those waiting for their model's load
    (both are work this pool owes before it can start anything new), running those on a
    replica. The router's `load` (GET /get_load) is their sum."""
    return totals(request_counts(entry) for entry in list(models.values()))


def totals(counts: Iterable[tuple[int, int, int]]) -> tuple[int, int]:
    waiting = running = 0
    for depth, loading, busy in counts:
        waiting += depth + loading
        running += busy
    return waiting, running
