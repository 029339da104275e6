"""The one interface every runtime adapter implements.

Lifecycle: the registry builds one adapter per replica with the model's spec, calls
`load()` (blocking; run off the hub by the caller), then `generate()` for each job, and
`close()` once. `generate()` returns an iterator of `Chunk`s that the executor drives on a replica thread
(or, for socket-bound adapters, a hub greenlet); cancelling a job means the executor stops
pulling and calls the iterator's `close()`, so adapters free per-job resources in a
`finally`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from marshmallow import fields, validate

from llmpool import gpu
from llmpool.config.fields import MultipleOf, StrictFloat, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.generation import Chunk, GenerationRequest


@dataclass(frozen=True)
class Capabilities:
    modalities: tuple[str, ...]
    multi_turn: bool
    thinking_modes: tuple[str, ...]
    streaming: bool = True
    # Whether the runtime constrains an answer to a JSON schema (`OutputFormat`); a request
    # for structured output to a model without it is a 400 naming the field.
    structured_output: bool = False
    # Whether the constraint starts where the thoughts end, so a thinking request may ask
    # for structured output too (else that pair is a 400: it would bind the thoughts).
    structured_after_thinking: bool = False
    # Whether the model is shown `tools` and its calls come back as tool calls; and
    # whether a `required` or named tool_choice is held (else that choice is a 400).
    tool_calls: bool = False
    forced_tool_calls: bool = False
    # The decoding knobs (generation.KNOBS) the runtime honours; a request that sets one
    # it lacks is a 400 naming the field. Most runtimes sample with top_k, a repetition
    # penalty and a seed per request; beam search is CTranslate2's alone.
    decoding: tuple[str, ...] = ("top_k", "repetition_penalty", "seed")
    # Whether a chat message's `name` reaches the model: where the runtime renders every
    # chat with the model's own template (which decides what a name shows); elsewhere it
    # is a 400. Declared before a load, so in-process llama.cpp (whose GGUF may have no
    # template, and whose single turns may go through the pool's own formats) says no.
    message_names: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "modalities": list(self.modalities),
            "multi_turn": self.multi_turn,
            "thinking_modes": list(self.thinking_modes),
            "streaming": self.streaming,
            "structured_output": self.structured_output,
            "structured_after_thinking": self.structured_after_thinking,
            "tool_calls": self.tool_calls,
            "forced_tool_calls": self.forced_tool_calls,
            "decoding": list(self.decoding),
            "message_names": self.message_names,
        }


@dataclass(frozen=True)
class Constraint:
    """One live load override an operator may set, and the rule it must satisfy."""

    key: str
    type: str  # "int" | "float" | "string" | "choice"
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    multiple_of: int | None = None

    def problem(self, value: Any) -> str | None:
        """None when `value` is acceptable, else why not (for a 400 message)."""
        if self.type == "choice":
            if value not in (self.choices or ()):
                return f"{self.key} must be one of {list(self.choices or ())}"
            return None
        if self.type == "string":
            return None if isinstance(value, str) and value else f"{self.key} must be a string"
        numeric = int if self.type == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"{self.key} must be {'an integer' if self.type == 'int' else 'a number'}"
        if self.min is not None and value < self.min:
            return f"{self.key} must be >= {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{self.key} must be <= {self.max:g}"
        if self.multiple_of and value % self.multiple_of:
            return f"{self.key} must be a multiple of {self.multiple_of}"
        return None

    def row(self, default: Any) -> dict[str, Any]:
        return {
            "key": self.key,
            "type": self.type,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices) if self.choices else None,
            "multiple_of": self.multiple_of,
            "default": default,
        }


def constraint_of(name: str, field: fields.Field) -> Constraint:
    """The live-override rule of a settings field, read off its validators.

    A live string must also be non-empty (Constraint's "string" rule), although a
    settings file may take "". Raises TypeError for a rule a Constraint cannot state.
    """
    kind = {StrictInt: "int", StrictFloat: "float", fields.String: "string"}.get(type(field))
    rules = list(field.validators)
    if kind == "string" and len(rules) == 1 and isinstance(rules[0], validate.OneOf):
        return Constraint(name, "choice", choices=tuple(str(c) for c in rules[0].choices))
    if kind is None:
        raise TypeError(f"{name}: a live override cannot state the rule of {field!r}")
    low = high = step = None
    for rule in rules:
        inclusive = isinstance(rule, validate.Range) and rule.min_inclusive and rule.max_inclusive
        if isinstance(rule, validate.Range) and inclusive and kind != "string":
            low, high = rule.min, rule.max
        elif isinstance(rule, MultipleOf) and kind == "int":
            step = rule.step
        else:
            raise TypeError(f"{name}: a live override cannot state the rule {rule!r}")
    return Constraint(name, kind, min=low, max=high, multiple_of=step)


class _LiveConstraints:
    """`Adapter.constraints`: derived once per class from the fields of its
    `config_fields()` that carry the LIVE metadata."""

    def __get__(self, obj: object, owner: type[Adapter]) -> tuple[Constraint, ...]:
        cached = owner.__dict__.get("_live_constraints")
        if cached is None:
            cached = tuple(
                constraint_of(key, field)
                for key, field in owner.config_fields().items()
                if field.metadata.get("live")
            )
            setattr(owner, "_live_constraints", cached)  # noqa: B010 (per class, not inherited)
        return cached


class Adapter:
    """Base of all backend adapters; subclasses set the class attributes below."""

    backend: ClassVar[str] = ""
    # True: generate blocks in C (in-process runtimes): jobs run on real replica threads.
    # False: it only waits on (gevent-cooperative) sockets: jobs run as greenlets on the
    # hub. `load` and `close` always run on a real thread (they may wait on processes).
    blocking: ClassVar[bool] = True
    # What the runtime itself raises when it fails (502 backend_error). Anything else
    # escaping `generate` is a bug in the pool: 500 internal_error, trace in the log.
    runtime_errors: ClassVar[tuple[type[Exception], ...]] = (RuntimeError, OSError, MemoryError)
    # False: one job at a time per replica; target_inflight is clamped to 1.
    can_batch: ClassVar[bool] = False
    # The live load overrides: the config fields marked LIVE (never written by hand).
    constraints = _LiveConstraints()

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        self.spec = spec
        self.replica_id = replica_id
        # Set by the model before load: called once if the runtime dies on its own
        # (a child process exiting), with a message naming why.
        self.on_failure: Callable[[str], None] | None = None

    # -- class-level facts, known before anything loads ------------------------------
    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        """This backend's own settings keys (validated strictly with the common ones)."""
        return {}

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        return Capabilities(modalities=("text",), multi_turn=False, thinking_modes=("default",))

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int | None:
        """The largest `decoding.max_tokens` a request may ask of this model."""
        return None

    @classmethod
    def memory_device(cls, spec: ModelSpec) -> str | None:
        """Where this model's memory lives, for the placement budget: "host" (RAM), a GPU
        index ("0"), or None (counted nowhere: a remote API). The settings' `memory_device`
        overrides it; only one device per model is accounted (a model split over several
        GPUs is counted on the first). Default: RAM."""
        return "host"

    @staticmethod
    def gpu_or_host(offloads: bool, index: int = 0) -> str:
        """GPU `index` when the runtime offloads to a GPU and this machine has one, else
        "host" (a CPU-only box runs GPU-capable runtimes from RAM)."""
        return str(index) if offloads and gpu.present() else "host"

    @classmethod
    def artifact_size_bytes(cls, spec: ModelSpec) -> int | None:
        """Size on disk of the weights, the fallback VRAM estimate."""
        if not spec.model_path or not os.path.exists(spec.model_path):
            return None
        if os.path.isfile(spec.model_path):
            return os.path.getsize(spec.model_path)
        return sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(spec.model_path)
            for name in names
        )

    # -- per replica ----------------------------------------------------------------
    def load(self) -> None:
        """Bring the runtime up. Blocks; raises on failure (the caller tears down)."""
        raise NotImplementedError

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        """A blocking iterator of chunks, the last one carrying `final`."""
        raise NotImplementedError

    def interrupt(self, request: GenerationRequest) -> None:
        """The job generating `request` was asked to stop: wake it if it is waiting inside
        the runtime (a long prefill, a busy engine), so that it stops now rather than at
        its next chunk. Called by the executor under its lock: must never block. Default:
        nothing, the stop is seen at the next chunk."""

    def close(self) -> None:
        """Release the runtime. Idempotent; must not raise for an unloaded runtime."""

    def footprint_mib(self) -> float | None:
        """What this loaded runtime holds on its memory device, where the runtime itself
        knows better than the pool's measurement from outside (llmpool.placement.measure);
        None (the default): measure from outside."""
        return None

    def cancel_load(self) -> bool:
        """Called from another thread while `load` runs, when nobody waits for the model
        any more: make `load` fail soon, and return True, where the runtime allows it
        before it is up; False (the default) means the load runs to its end and the
        model is unloaded right after. Must not block."""
        return False

    def health(self) -> bool:
        return True

    def pid(self) -> int | None:
        """The child process id, for subprocess backends."""
        return None

    def kv_cache_usage(self) -> float | None:
        """The KV cache's utilisation, 0 to 1, where the runtime reports it (for the
        inference gateway's endpoint picker). Called at each metrics scrape, on the hub:
        must answer from memory, never wait. Default: unknown."""
        return None

    def logs(self, tail: int, since: int = 0, before: int | None = None) -> list[str]:
        """The last `tail` lines the runtime printed (subprocess backends), of those
        numbered `since` <= n < `before` (`llmpool.supervisor.next_line_seq`)."""
        return []
