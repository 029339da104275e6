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
    InvalidParam,
    ModalityUnsupported,
    ModelFailed,
    ModelUnloading,
    MultiTurnUnsupported,
    QueueFull,
    RemoteNotAllowed,
    RequestFieldInvalid,
    SettingsConflict,
    ThinkingUnsupported,
    UnknownModel,
)
from llmpool.generation import GenerationRequest
from llmpool.greenbridge import call_blocking, start_thread
from llmpool.job import Job
from llmpool.media import MediaPolicy, inline_images
from llmpool.metrics import JobTimes
from llmpool.model import ModelEntry
from llmpool.placement.ledger import Ledger
from llmpool.placement.placer import Placer
from llmpool.placement.waiting import Waiting
from llmpool.reload import plan_reload
from llmpool.states import ModelState
from llmpool.telemetry import Telemetry

log = logging.getLogger(__name__)


class Pool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.media: MediaPolicy = settings.media
        # Replaced as a whole by `reload` (readers take a reference; never mutated in place).
        self.models: dict[str, ModelEntry] = {}
        self.crashes = CrashWatch(settings.service.state_dir)
        self.telemetry = Telemetry(lambda: self.models, self.crashes.counts)
        self.ledger = Ledger(settings.service.state_dir)
        self.models = {name: self._new_entry(spec) for name, spec in settings.models.items()}
        self.placer = Placer(lambda: self.models, settings.service, self.telemetry)
        self.ready = False
        self._closed = False

    def _new_entry(self, spec: ModelSpec, before: ModelEntry | None = None) -> ModelEntry:
        """A model's entry; one that replaces `before` (a settings reload) takes over its
        waiting line, so jobs waiting for a load wait for the new definition's."""
        adapter_cls = registry.get(spec.backend)
        assert adapter_cls is not None  # the loader rejected unknown backends
        line = before.line if before is not None else None
        return ModelEntry(spec, adapter_cls, self.telemetry, self.ledger, self.crashes, line)

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
        """Admit a request and put it in its model's line. Every check runs before the
        job takes a place in line, so a rejected request never occupies a slot.

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
        if (refused := entry.refusal()) is not None:
            raise refused  # early, before the media: enqueue decides again, atomically
        self._admit(entry, request, allow_remote)
        request = inline_images(request, self.media)
        # Fetching images may have let a settings reload run: queue on the current entry.
        entry = self.entry(model)
        now = time.monotonic()
        job = Job(model=model, request=request, times=JobTimes(pool_started or now, now))
        try:
            entry.enqueue(job)
        except QueueFull:
            self.telemetry.rejected_queue_full(model)
            raise
        if not entry.serving:
            self.placer.wake()  # a load on demand: the placer sees the line at once
        return job

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
        if (unhonoured := request.decoding.unhonoured(caps.decoding)) is not None:
            knob, param = unhonoured
            where = f"model '{model}' (backend '{entry.spec.backend}')"
            raise InvalidParam(param, f"{param}: {knob} is not supported by {where}; leave it out")
        self._admit_format(entry, request)
        prompts.check(entry.spec, request)  # format rules, e.g. TranslateGemma's target language
        limit = entry.adapter_cls.max_tokens_limit(entry.active_spec)
        if limit is not None and request.decoding.max_tokens > limit:
            raise RequestFieldInvalid(
                ["body", "decoding", "max_tokens"],
                f"Must be less than or equal to {limit} for model '{model}'.",
                "value_error.number.not_le",
            )

    @staticmethod
    def _admit_format(entry: ModelEntry, request: GenerationRequest) -> None:
        """Tools only where the model's runtime is shown them and its calls are parsed;
        structured output only where the runtime constrains it, and with thinking on only
        where the constraint starts after the thoughts."""
        fmt, caps, model = request.output_format, entry.capabilities, entry.name
        backend = f"model '{model}' (backend '{entry.spec.backend}')"
        tools, held = request.tools, request.held_tools
        if held is not None and caps.tool_calls and not caps.forced_tool_calls:
            message = f"tool_choice '{held.choice}' is not held by {backend}; send 'auto' or 'none'"
            raise InvalidParam("tool_choice", message)
        if not caps.tool_calls:
            if tools is not None:
                raise InvalidParam("tools", f"tools: tool calls are not supported by {backend}")
            if any(m.tool_calls or m.role == "tool" for m in request.messages or ()):
                message = f"messages: tool calls and tool results are not supported by {backend}"
                raise InvalidParam("messages", message)
        if (
            held is not None
            and not caps.structured_after_thinking
            and prompts.thinks(entry.active_spec, request)
        ):
            raise InvalidParam(
                "thinking",
                f"tool_choice '{held.choice}' with thinking on is not supported by {backend}: the constraint "
                "that holds the call would bind the thoughts too; send thinking: 'disabled'",
            )
        if fmt is None:
            return
        if not caps.structured_output:
            message = f"{fmt.param}: structured output ({fmt.kind}) is not supported by {backend}"
            raise InvalidParam(fmt.param, message)
        if not caps.structured_after_thinking and prompts.thinks(entry.active_spec, request):
            raise InvalidParam(
                "thinking",
                f"{fmt.param} with thinking on is not supported by {backend}: its constraint would "
                "bind the thoughts too; send thinking: 'disabled'",
            )

    def position(self, job: Job) -> int:
        """1-based place of a queued job in its model's line, 0 once it left it."""
        entry = self.models.get(job.model)
        return entry.line.place(job) if entry is not None else 0

    def where(self, job: Job) -> Waiting | None:
        """Where a job that has not started stands, in one call: waiting for its model's
        load ("loading"), for memory to load it ("memory"), or in its model's queue
        ("queued", `place` from 1). None: it runs or ended."""
        entry = self.models.get(job.model)
        if entry is None:
            return None
        place = entry.line.place(job)
        if not place:
            return None
        if entry.serving:
            return Waiting("queued", job.model, 0.0, place=place)
        return self.placer.waiting(entry)

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job if queued, stop it at the next token if running."""
        entry = self.models.get(job.model)
        if entry is None:
            return
        if entry.line.remove(job):
            job.drop(None)  # out of line first: nobody else can start or fail it now
            if not entry.serving:
                # A load on demand may now run for nobody: the placer cancels it at once
                # rather than at its next poll, which a short load can finish before.
                self.placer.wake()
            return
        executor = entry.executor
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
            self.models = self._replace_entries(plan.unchanged, plan.removed, new)
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

    def _replace_entries(
        self, unchanged: list[str], removed: list[str], new: Settings
    ) -> dict[str, ModelEntry]:
        """The entries after a reload. A redefined model that loads on demand keeps its
        line (its waiting jobs wait for the new definition's load); one removed, or no
        longer loaded on demand, fails them."""
        current = self.models
        gone = "a settings reload removed this model's load on demand"
        for name in removed:
            self._fail_queued(current[name], gone)
        models = {}
        for name, spec in new.models.items():
            before = current.get(name)
            if name in unchanged and before is not None:
                models[name] = before
                continue
            if before is not None and not spec.load_on_demand:
                self._fail_queued(before, gone)
                before = None
            models[name] = self._new_entry(spec, before)
        return models

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
        for entry in self.models.values():
            self._fail_queued(entry, "the pool is shutting down")
        call_blocking(self._shutdown_all)
        self.crashes.recorder.disarm()  # a clean exit: nothing for the next worker to explain

    @staticmethod
    def _fail_queued(entry: ModelEntry, why: str) -> None:
        """Close the model's line for good: what waits in it fails, later jobs are refused."""
        error = ModelUnloading(why, model=entry.name)
        for job in entry.line.close(error):
            job.drop(error)

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
