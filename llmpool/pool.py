"""The pool: every configured model, admission, load/unload, shutdown.

This is the object the HTTP layer talks to; it takes plain data and raises `PoolError`s.
`position` and `cancel` never wait; `submit` waits only while it reads or fetches a
request's image URLs (`llmpool.media`: on the hub only the calling greenlet waits).
`load`, `unload` and `shutdown` wait on runtimes and real locks: they run that work on
real threads (`call_blocking`), so on the hub they suspend only the calling greenlet.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from llmpool import gpu, prompts
from llmpool.backends import registry
from llmpool.config.spec import ModelSpec, Settings
from llmpool.crashes import CrashWatch
from llmpool.errors import (
    ModalityUnsupported,
    ModelFailed,
    ModelLoading,
    ModelNotLoaded,
    ModelUnloading,
    MultiTurnUnsupported,
    QueueFull,
    RemoteNotAllowed,
    RequestFieldInvalid,
    SettingsConflict,
    ThinkingUnsupported,
    UnknownModel,
)
from llmpool.executor import Executor
from llmpool.generation import GenerationRequest
from llmpool.greenbridge import call_blocking, start_thread
from llmpool.job import Job
from llmpool.media import MediaPolicy, inline_images
from llmpool.metrics import JobTimes
from llmpool.model import ModelEntry
from llmpool.placement.demand import Waiting
from llmpool.placement.ledger import Ledger
from llmpool.placement.placer import Placer
from llmpool.reload import plan_reload
from llmpool.states import ModelState
from llmpool.telemetry import Telemetry

log = logging.getLogger(__name__)

_NOT_SERVING = {
    ModelState.UNLOADED: ModelNotLoaded,
    ModelState.LOADING: ModelLoading,
    ModelState.UNLOADING: ModelUnloading,
    ModelState.FAILED: ModelFailed,
}


class Pool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.media: MediaPolicy = settings.media
        # Replaced as a whole by `reload` (readers take a reference; never mutated in place).
        self.models: dict[str, ModelEntry] = {}
        self.crashes = CrashWatch(settings.service.state_dir)
        self.telemetry = Telemetry(
            lambda: self.models, lambda name: self.placer.queued(name), self.crashes.counts
        )
        self.ledger = Ledger(settings.service.state_dir)
        self.models = {name: self._new_entry(spec) for name, spec in settings.models.items()}
        self.placer = Placer(lambda: self.models, settings.service, self.telemetry)
        self.ready = False
        self._closed = False

    def _new_entry(self, spec: ModelSpec) -> ModelEntry:
        adapter_cls = registry.get(spec.backend)
        assert adapter_cls is not None  # the loader rejected unknown backends
        return ModelEntry(spec, adapter_cls, self.telemetry, self.ledger, self.crashes)

    # -- lookup ----------------------------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(f"model '{name}' is not configured", model=name) from None

    def loaded_ids(self) -> list[str]:
        return sorted(n for n, e in self.models.items() if e.state is ModelState.LOADED)

    # -- inference -------------------------------------------------------------------
    def submit(
        self,
        model: str,
        request: GenerationRequest,
        *,
        allow_remote: bool = False,
        pool_started: float | None = None,
    ) -> Job:
        """Admit and enqueue a request. Every check runs before the job takes a place
        in the queue, so a rejected request never occupies a slot.

        The media policy runs last, once every cheap rule has passed: a request refused
        anyway never makes the pool read a file or fetch a URL. What is queued is the
        request with its images inlined as data URLs.
        """
        entry = self.entry(model)
        if (reason := self.crashes.quarantine(model)) is not None:
            raise ModelFailed(
                f"model '{model}' is quarantined: {reason}. An admin load "
                f"(POST /v1/admin/models/{model}/load) lifts the quarantine",
                model=model,
            )
        on_demand = entry.spec.load_on_demand
        if not on_demand:
            self._executor(entry)
        self._admit(entry, request, allow_remote)
        request = inline_images(request, self.media)
        now = time.monotonic()
        job = Job(model=model, request=request, times=JobTimes(pool_started or now, now))
        try:
            if on_demand and (self.placer.wants(entry) or entry.state is not ModelState.LOADED):
                self._wait_for_load(entry, job)
                return job
            executor = self._executor(entry)  # the model may have begun unloading meanwhile
            try:
                executor.submit(job)
            except ModelUnloading:
                if not on_demand:
                    raise
                self._wait_for_load(entry, job)  # unloading by the pool's own decision
        except QueueFull:
            self.telemetry.rejected_queue_full(model)
            raise
        return job

    def _wait_for_load(self, entry: ModelEntry, job: Job) -> None:
        """`job` waits with the placer until its model serves (load on demand)."""
        self.placer.start()
        self.placer.enqueue(entry, job)

    @staticmethod
    def _executor(entry: ModelEntry) -> Executor:
        """The executor of a model that serves; else the error its state calls for."""
        executor = entry.executor
        if entry.state is not ModelState.LOADED or executor is None:
            raise _NOT_SERVING.get(entry.state, ModelNotLoaded)(
                f"model '{entry.name}' is {entry.state.value}", model=entry.name
            )
        return executor

    def _admit(self, entry: ModelEntry, request: GenerationRequest, allow_remote: bool) -> None:
        model = entry.name
        if getattr(entry.adapter_cls, "is_remote", False) and not allow_remote:
            raise RemoteNotAllowed(
                f"model '{model}' runs on a remote API; set allow_remote: true", model=model
            )
        caps = entry.capabilities
        if request.has_images and "image" not in set(caps.modalities) & set(entry.spec.modalities):
            raise ModalityUnsupported(f"model '{model}' does not accept images", model=model)
        if request.messages is not None and not caps.multi_turn:
            raise MultiTurnUnsupported(
                f"model '{model}' takes single-turn input only; send 'input'", model=model
            )
        if request.thinking not in caps.thinking_modes:
            raise ThinkingUnsupported(
                f"thinking '{request.thinking}' not offered by '{model}' "
                f"(offered: {', '.join(caps.thinking_modes)})",
                model=model,
            )
        prompts.check(entry.spec, request)  # format rules, e.g. TranslateGemma's target language
        limit = entry.adapter_cls.max_tokens_limit(entry.active_spec)
        if limit is not None and request.decoding.max_tokens > limit:
            raise RequestFieldInvalid(
                ["body", "decoding", "max_tokens"],
                f"Must be less than or equal to {limit} for model '{model}'.",
                "value_error.number.not_le",
            )

    def position(self, job: Job) -> int:
        entry = self.models.get(job.model)
        executor = entry.executor if entry is not None else None
        return executor.position(job) if executor else 0

    def where(self, job: Job) -> Waiting | None:
        """Where a job that has not started stands, in one call: waiting for its model's
        load ("loading"), for memory to load it ("memory"), or in its model's queue
        ("queued", `place` from 1). None: it runs, ended, or is about to start."""
        waiting = self.placer.waiting(job)
        if waiting is not None:
            return waiting
        place = self.position(job)
        return Waiting("queued", job.model, 0.0, place=place) if place else None

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job if queued, stop it at the next token if running."""
        if self.placer.remove(job):
            return
        entry = self.models.get(job.model)
        executor = entry.executor if entry is not None else None
        if executor is not None and not job.finished:
            executor.cancel(job)

    # -- admin -----------------------------------------------------------------------
    def load(
        self,
        name: str,
        *,
        replicas: int | None = None,
        target_inflight: int | None = None,
        overrides: dict[str, Any] | None = None,
        has_body: bool = False,
        wait: bool = True,
    ) -> ModelEntry:
        entry = self.entry(name)
        plan = entry.check_load_request(replicas, target_inflight, overrides or {})
        self.crashes.lift(name)  # an operator asks for it: the model may load again
        if not call_blocking(entry.begin_load, plan, has_body=has_body):
            return entry  # loaded or loading already: the same answer as a load that ends so
        if wait:
            call_blocking(entry.finish_load)
        else:
            start_thread(self._load_quietly, entry, name=f"load-{name}")
        return entry

    @staticmethod
    def _load_quietly(entry: ModelEntry) -> None:
        try:
            entry.finish_load()
        except Exception:
            log.warning("background load of %s failed: %s", entry.name, entry.last_error)

    def unload(self, name: str, *, force: bool = False) -> ModelEntry:
        entry = self.entry(name)
        call_blocking(entry.unload, force, refuse_while_loading=True)
        return entry

    def reload(self, new: Settings) -> dict[str, Any]:
        """Apply freshly read settings atomically (llmpool.reload says what may change);
        SettingsConflict, with nothing applied, when something in use would change.

        Runs on the hub without yielding, so no admin call interleaves; loads and unloads
        running on threads hold their model's write lock, which makes that model a
        conflict too."""
        plan = plan_reload(self.settings, new, self.models)
        locked: list[ModelEntry] = []
        try:
            for name in [*plan.updated, *plan.removed]:
                entry = self.models[name]
                if entry.try_hold():
                    locked.append(entry)
                elif not any(c.get("model") == name for c in plan.conflicts):
                    plan.conflicts.append({"model": name, "reason": "a load or unload is in progress"})
            if plan.conflicts:
                raise SettingsConflict(
                    "the new settings change something in use; nothing was applied", plan.conflicts
                )
            for entry in locked:
                entry.retire()
            current = self.models
            self.models = {
                name: current[name] if name in plan.unchanged else self._new_entry(spec)
                for name, spec in new.models.items()
            }
            self.settings = new
            self.media = new.media
        finally:
            for entry in locked:
                entry.release()
        log.info(
            "settings reloaded: added %s, removed %s, updated %s, changed %s",
            plan.added,
            plan.removed,
            plan.updated,
            plan.settings_changed,
        )
        return plan.report()

    def memory(self) -> dict[str, Any]:
        """GET /v1/admin/memory: budgets, holders, reservations, free, waiting loads."""
        return self.placer.view()

    def gpu_memory(self) -> dict[str, Any]:
        gpus, error = gpu.snapshot()
        models = [{"name": e.name, "state": e.state.value, **e.vram()} for e in self.models.values()]
        return {"gpus": [g.row() for g in gpus], "models": models, "error": error}

    # -- lifecycle -------------------------------------------------------------------
    def record_crashes(self) -> None:
        """The gunicorn worker, before its models load: explain a previous worker's death
        inside a runtime (llmpool.crashes: the models it was working on are marked FAILED,
        quarantined ones stay so) and start recording this worker's own work."""
        crashed = {crash.model for crash in self.crashes.recover()}
        for name, entry in self.models.items():
            reason = self.crashes.quarantine(name)
            if reason is not None:
                entry.mark_crashed(f"quarantined: {reason}. An admin load lifts the quarantine")
            elif name in crashed:
                entry.mark_crashed(self.crashes.explain(name) or "the previous worker died")
        self.crashes.recorder.arm()

    def start(self) -> None:
        """Load every enabled model, one after another (a quarantined one stays failed);
        failures are logged, not fatal."""
        self.placer.start()
        for entry in self.models.values():
            if self._closed:
                break
            startable = entry.state in (ModelState.UNLOADED, ModelState.FAILED)
            if entry.spec.enabled and startable and self.crashes.quarantine(entry.name) is None:
                try:
                    self.load(entry.name)
                except Exception as exc:
                    log.error("start-up load of %s failed: %s", entry.name, exc)
        self.ready = True

    def start_in_background(self) -> None:
        start_thread(self.start, name="startup-loader")

    def shutdown(self) -> None:
        """Cancel everything and close every runtime, all models at once; idempotent.

        Concurrent because each child may take its stop timeout to die, and the service
        manager's own stop timeout covers the whole shutdown.
        """
        self._closed = True
        self.crashes.recorder.stopping()
        self.placer.close()
        call_blocking(self._shutdown_all)
        self.crashes.recorder.disarm()  # a clean exit: nothing for the next worker to explain

    def _shutdown_all(self) -> None:
        stoppers = [
            start_thread(self._shutdown_one, entry, name=f"shutdown-{entry.name}")
            for entry in self.models.values()
        ]
        for thread in stoppers:
            thread.join()

    @staticmethod
    def _shutdown_one(entry: ModelEntry) -> None:
        if entry.state is ModelState.LOADING:
            entry.cancel_load()  # a child still starting is stopped rather than awaited
            entry.wait_settled(timeout=60)
        try:
            entry.unload(force=True)
        except Exception:
            log.exception("shutting down %s failed", entry.name)
