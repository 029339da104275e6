"""A scripted in-process adapter for scheduler-level tests.

Not a stand-in for a real runtime (the HTTP and integration tests use the real SmolLM2
GGUF): it exists so queueing, replica choice and cancellation can be driven exactly.
It behaves like a blocking runtime: `generate` sleeps per token on the calling OS thread
and stops as soon as its iterator is closed.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

from marshmallow import fields, validate

from llmpool.backends.base import Adapter, Capabilities
from llmpool.config.fields import LIVE, StrictBool, StrictFloat, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import ModelLoadFailed
from llmpool.generation import Chunk, Final, GenerationRequest, ToolCallDelta


class ScriptedAdapter(Adapter):
    backend = "scripted"
    can_batch = True
    # Observability for tests: every live instance, and how many generations are running.
    instances: ClassVar[list[ScriptedAdapter]] = []
    lock = threading.Lock()

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self.loaded = False
        self.closed = False
        self.active = 0
        self.generations = 0
        self.tokens_emitted = 0
        self.last_request: GenerationRequest | None = None
        self._cancelled = threading.Event()
        ScriptedAdapter.instances.append(self)

    @classmethod
    def config_fields(cls) -> dict[str, fields.Field]:
        return {
            "scripted_tokens": StrictInt(load_default=5, validate=validate.Range(1, 10_000), metadata=LIVE),
            "scripted_delay_s": StrictFloat(load_default=0.01),
            "scripted_fail_load": StrictBool(load_default=False),
            # Placement tests: how long load() takes (cancel_load cuts it short), and the
            # memory the runtime says it holds (the ledger's measurement).
            "scripted_load_s": StrictFloat(load_default=0.0),
            "scripted_memory_mib": StrictFloat(load_default=None, allow_none=True),
            "scripted_batch": StrictBool(load_default=True),
            # Raise RuntimeError after this many tokens (a runtime crashing mid-stream).
            "scripted_fail_after": StrictInt(load_default=None, allow_none=True),
            # Raise KeyError (not a runtime error: a bug in the pool's own code) likewise.
            "scripted_bug_after": StrictInt(load_default=None, allow_none=True),
            # Emit this many reasoning deltas ("r0 ", "r1 ", ...) before the text.
            "scripted_reasoning": StrictInt(load_default=0, validate=validate.Range(0, 5000)),
            # False: the tokens are generated but none is answer text (a silent model).
            "scripted_answer": StrictBool(load_default=True),
            # A single-turn input containing this text makes the runtime really fault in C
            # (a NULL read: SIGSEGV), killing the process it runs in (issue 19).
            "scripted_fault_marker": fields.String(load_default=None, allow_none=True),
            # The answer is this text (in 4-character deltas) instead of "t0 t1 ...", and
            # the model says it does structured output: what a runtime answering a schema
            # sends, valid or not (the pool's check after generation is under test).
            "scripted_text": fields.String(load_default=None, allow_none=True),
            "scripted_structured": StrictBool(load_default=False),
            # The model is shown tools, and answers with this call (JSON {"name",
            # "arguments"}) when a request offers tools, streamed as runtimes stream calls:
            # the id and name first, then the arguments text in 5-character pieces.
            "scripted_tools": StrictBool(load_default=False),
            "scripted_call": fields.String(load_default=None, allow_none=True),
            # The model thinks when asked to (modes default, enabled, disabled): its
            # `scripted_reasoning` deltas come only with thinking on.
            "scripted_thinks": StrictBool(load_default=False),
            # The longest answer a request may ask for (its max_tokens).
            "scripted_max_tokens": StrictInt(load_default=1000),
        }

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        structured = bool(spec.options["scripted_structured"])
        return Capabilities(
            modalities=("text", "image"),
            multi_turn=True,
            thinking_modes=("default", "enabled", "disabled")
            if spec.options["scripted_thinks"]
            else ("default",),
            structured_output=structured,
            structured_after_thinking=structured,
            tool_calls=bool(spec.options["scripted_tools"]),
            forced_tool_calls=bool(spec.options["scripted_tools"]),
        )

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int:
        return int(spec.options["scripted_max_tokens"])

    def load(self) -> None:
        if self._cancelled.wait(self.spec.options["scripted_load_s"]):
            raise ModelLoadFailed("load cancelled", model=self.spec.name)
        if self.spec.options["scripted_fail_load"] and self.replica_id > 0:
            raise ModelLoadFailed("replica refused to start", model=self.spec.name)
        self.loaded = True

    def cancel_load(self) -> bool:
        self._cancelled.set()
        return True

    def footprint_mib(self) -> float | None:
        mib = self.spec.options["scripted_memory_mib"]
        return float(mib) if mib is not None else None

    def close(self) -> None:
        self.closed = True

    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        with self.lock:
            self.active += 1
            self.generations += 1
            self.last_request = request
        try:
            marker = self.spec.options["scripted_fault_marker"]
            if marker and isinstance(request.input, str) and marker in request.input:
                ctypes.string_at(0)  # reads address 0 in C: the process dies of SIGSEGV
            n = min(self.spec.options["scripted_tokens"], request.decoding.max_tokens)
            fail_after = self.spec.options["scripted_fail_after"]
            bug_after = self.spec.options["scripted_bug_after"]
            thinks = not self.spec.options["scripted_thinks"] or request.thinking != "disabled"
            for i in range(self.spec.options["scripted_reasoning"] if thinks else 0):
                yield Chunk(reasoning=f"r{i} ")
            call = self.spec.options["scripted_call"]
            if call is not None and request.tools is not None:
                value = json.loads(call)
                arguments = json.dumps(value["arguments"])
                yield Chunk(tool_call=ToolCallDelta(0, "call_scripted", value["name"], ""))
                for i in range(0, len(arguments), 5):
                    yield Chunk(tool_call=ToolCallDelta(0, arguments=arguments[i : i + 5]))
                yield Chunk(final=Final(finish_reason="stop", prompt_tokens=3, output_tokens=n))
                return
            text = self.spec.options["scripted_text"]
            if text is not None:
                # The request's stop strings end the text, as runtimes do, and are named.
                cuts = sorted((text.find(s), s) for s in request.decoding.stop if s in text)
                stopped = cuts[0][1] if cuts else None
                text = text[: cuts[0][0]] if cuts else text
                for i in range(0, len(text), 4):
                    yield Chunk(text=text[i : i + 4])
                final = Final(finish_reason="stop", stop_sequence=stopped, prompt_tokens=3, output_tokens=n)
                yield Chunk(final=final)
                return
            for i in range(n):
                if fail_after is not None and i == fail_after:
                    raise RuntimeError("scripted runtime crashed")
                if bug_after is not None and i == bug_after:
                    raise KeyError("scripted bug")
                time.sleep(self.spec.options["scripted_delay_s"])
                self.tokens_emitted += 1
                if self.spec.options["scripted_answer"]:
                    yield Chunk(text=f"t{i} ")
            yield Chunk(final=Final(finish_reason="length", prompt_tokens=3, output_tokens=n))
        finally:
            with self.lock:
                self.active -= 1


def scripted_model(**options: Any) -> dict[str, Any]:
    """A settings-file model definition for the scripted backend."""
    return {"backend": "scripted", "enabled": True, **options}
