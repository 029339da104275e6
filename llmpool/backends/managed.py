"""Shared base of backends that run their runtime as a supervised child HTTP server.

A subclass says how to build the command line (`build_argv`), where readiness shows
(`ready_path`) and how to turn a request into a chat payload (`payload`). This base starts
the child (new port on "address in use"), waits for readiness while watching for an early
exit, forwards requests as streamed chat completions, and reports a death to the model.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import requests
import urllib3
from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends.base import Adapter, Capabilities
from llmpool.backends.kv_poll import KvPoller
from llmpool.backends.openai_chat import (
    ChatUpstream,
    UpstreamFailure,
    endpoint,
    error_text,
    prompt_body,
    read_capped,
    stream_chat,
)
from llmpool.config.fields import StrictFloat, StrictInt
from llmpool.config.spec import ModelSpec
from llmpool.errors import BackendError, BackendTimeout, InvalidRequest, ModelLoadFailed, PoolError
from llmpool.faults import describe_exit
from llmpool.generation import Chunk, GenerationRequest
from llmpool.secrets import secret_values
from llmpool.supervisor import ChildFailed, ChildProcess, ChildSpec, pick_port
from llmpool.tool_calls import read_calls

PORT_ATTEMPTS = 3


def supervision_fields(prefix: str, start_timeout_s: float) -> dict[str, fields.Field]:
    """Keys every managed backend has, under its own prefix."""
    return {
        f"{prefix}binary": fields.String(load_default=None, allow_none=True),
        f"{prefix}host": fields.String(load_default="127.0.0.1"),
        f"{prefix}port": StrictInt(load_default=None, allow_none=True, validate=validate.Range(1, 65535)),
        f"{prefix}library_path": fields.List(fields.String(), load_default=list),
        f"{prefix}env": fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict),
        f"{prefix}extra_args": fields.List(fields.String(), load_default=list),
        f"{prefix}start_timeout_s": StrictFloat(load_default=start_timeout_s, validate=validate.Range(min=1)),
        f"{prefix}stop_timeout_s": StrictFloat(load_default=10.0, validate=validate.Range(min=0)),
        f"{prefix}request_timeout_s": StrictFloat(load_default=600.0, validate=validate.Range(min=1)),
        f"{prefix}log_lines": StrictInt(load_default=2000, validate=validate.Range(min=10)),
    }


class ManagedServerAdapter(Adapter):
    blocking = False  # only sockets and child processes: cooperative under gevent
    can_batch = True  # the server has `target_inflight` slots of its own
    prefix: ClassVar[str] = ""  # config key prefix, e.g. "llama_server_"
    process_name: ClassVar[str] = ""  # for messages and log labels
    ready_path: ClassVar[str] = "/health"
    # Flags this backend sets itself from the model's settings; refused in extra args.
    reserved_flags: ClassVar[tuple[str, ...]] = ()
    # Gauges of the child's /metrics that give its KV-cache use (0-1); none: unknown.
    kv_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: ModelSpec, replica_id: int) -> None:
        super().__init__(spec, replica_id)
        self.child: ChildProcess | None = None
        self.port: int | None = None
        self._upstream: ChatUpstream | None = None
        self._load_cancelled = False  # set by cancel_load, from another thread
        self._kv: KvPoller | None = None

    # -- subclass hooks --------------------------------------------------------------
    def build_argv(self, binary: str, port: int) -> list[str]:
        raise NotImplementedError

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        d = request.decoding
        body: dict[str, Any] = {
            "model": self.spec.name,
            **prompt_body(request),
            "max_tokens": d.max_tokens,
            "temperature": d.temperature,
            "top_p": d.top_p,
            "top_k": d.top_k,
            "stop": list(d.stop),
        }
        if d.seed is not None:
            body["seed"] = d.seed
        kwargs = prompts.template_kwargs(self.spec, request)
        if kwargs:  # a reasoning format: thinking on or off through the template
            body["chat_template_kwargs"] = kwargs
        return body

    def headers(self) -> dict[str, str]:
        return {}

    def child_env(self) -> dict[str, str]:
        """Variables set for the child on top of the pool's environment."""
        return dict(self.option("env"))

    def default_binary(self) -> str | None:
        return shutil.which(self.process_name)

    # -- facts -----------------------------------------------------------------------
    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        return Capabilities(
            modalities=spec.modalities,
            multi_turn=True,
            thinking_modes=prompts.chat_thinking_modes(spec),
            structured_output=True,  # response_format, passed on (llama-server, vLLM)
            message_names=True,  # messages passed on as sent, to the server's chat template
        )

    def option(self, key: str) -> Any:
        return self.spec.options[self.prefix + key]

    @property
    def label(self) -> str:
        return f"{self.process_name}[{self.spec.name}#{self.replica_id}]"

    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def logs(self, tail: int, since: int = 0, before: int | None = None) -> list[str]:
        return self.child.lines_since(tail, since, before) if self.child is not None else []

    # -- lifecycle -------------------------------------------------------------------
    def check_extra_args(self) -> None:
        for arg in self.option("extra_args"):
            flag = arg.split("=", 1)[0]
            if flag in self.reserved_flags:
                raise ModelLoadFailed(
                    f"{self.prefix}extra_args must not contain {flag}: the pool sets it "
                    "(from target_inflight or the model's own keys)",
                    model=self.spec.name,
                )

    def load(self) -> None:
        self.check_extra_args()
        binary = self.option("binary") or self.default_binary()
        if not binary:
            raise ModelLoadFailed(
                f"no {self.process_name} binary: set {self.prefix}binary or put it on PATH",
                model=self.spec.name,
            )
        fixed_port = self.option("port")
        for attempt in range(PORT_ATTEMPTS):
            if self._load_cancelled:
                break
            port = fixed_port or pick_port()
            argv = self.build_argv(binary, port)
            child = ChildProcess(
                self.label,
                ChildSpec(
                    argv=argv,
                    env=self.child_env(),
                    library_path=list(self.option("library_path")),
                    log_lines=self.option("log_lines"),
                    stop_timeout_s=self.option("stop_timeout_s"),
                    secrets=secret_values(self.spec.options, argv),
                ),
                on_exit=self._child_exited,
            )
            self.child = child
            try:
                child.start()
                if self._load_cancelled:  # cancelled while this child was being made
                    child.terminate()
                child.wait_ready(functools.partial(self._probe, port), self.option("start_timeout_s"))
            except ChildFailed as exc:
                child.stop()
                if self._load_cancelled:
                    raise ModelLoadFailed(
                        "load cancelled: nobody waits for it", model=self.spec.name
                    ) from exc
                if child.address_in_use() and fixed_port is None and attempt + 1 < PORT_ATTEMPTS:
                    continue  # lost the race for the port: try another
                raise ModelLoadFailed(exc.describe(), model=self.spec.name) from exc
            self.port = port
            # A local child: never through a proxy from the environment.
            self._upstream = ChatUpstream(
                self._url(port, ""), maxsize=self.spec.target_inflight, headers=self.headers()
            )
            if self.kv_metrics:
                url = self._url(port, "/metrics")
                self._kv = KvPoller(url, self.kv_metrics, self.headers(), label=self.label)
                self._kv.start()
            return

        raise ModelLoadFailed("load cancelled: nobody waits for it", model=self.spec.name)

    def cancel_load(self) -> bool:
        # The child is not serving yet: stopping it ends wait_ready at its next poll.
        self._load_cancelled = True
        child = self.child
        if child is not None:
            child.terminate()
        return True

    def _url(self, port: int, path: str) -> str:
        return f"http://{self.option('host')}:{port}{path}"

    def _probe(self, port: int) -> bool:
        try:
            response = requests.get(self._url(port, self.ready_path), headers=self.headers(), timeout=2)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _child_exited(self, returncode: int, tail: list[str]) -> None:
        if self.on_failure is not None:
            self.on_failure(self._death_message(returncode, tail))

    def _death_message(self, returncode: int | None, tail: list[str]) -> str:
        last = "\n".join(tail[-20:])
        return f"{self.label} exited with {describe_exit(returncode)}" + (
            f"\n--- last output ---\n{last}" if last else ""
        )

    def close(self) -> None:
        if self._kv is not None:
            self._kv.stop()
            self._kv = None
        if self.child is not None:
            self.child.stop()
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def kv_cache_usage(self) -> float | None:
        kv = self._kv
        return kv.value() if kv is not None else None

    # -- generation ------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        # Calls the runtime parsed pass as they are; calls it left in `content` (a template
        # its parser does not know) are read out here, for a known format.
        markers = prompts.request_tool_markers(self.spec, request)
        return self.relay(request, self.payload(request), lambda chunks: read_calls(chunks, markers))

    def relay(
        self,
        request: GenerationRequest,
        payload: dict[str, Any],
        read: Callable[[Iterator[Chunk]], Iterator[Chunk]],
    ) -> Iterator[Chunk]:
        """Stream `payload` to the child's endpoint for `request` and pass its chunks on
        through `read`; the child's failures in the pool's terms."""
        if self._upstream is None or self.port is None or self.child is None:
            raise BackendError("runtime is not loaded", model=self.spec.name)
        try:
            chunks = stream_chat(
                self._upstream,
                self._url(self.port, "/v1" + endpoint(request)),
                payload,
                timeout=(5.0, self.option("request_timeout_s")),
                label=self.label,
                # The runtime splits the thoughts out (see the subclass); this catches
                # whatever it leaves inline in `content`.
                splitter=prompts.request_splitter(self.spec, request),
            )
            yield from read(chunks)
        except UpstreamFailure as exc:
            raise self._local_error(exc) from exc

    def fetch(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` to the child's `path` and return its JSON answer (not streamed);
        raises the pool's error for a failure."""
        if self._upstream is None or self.port is None:
            raise BackendError("runtime is not loaded", model=self.spec.name)
        try:
            return fetch_json(
                self._upstream,
                self._url(self.port, path),
                body,
                timeout=(5.0, self.option("request_timeout_s")),
                label=self.label,
            )
        except UpstreamFailure as exc:
            raise self._local_error(exc) from exc

    def _local_error(self, exc: UpstreamFailure) -> PoolError:
        """Our own child failed a request: say why in the pool's terms."""
        model = self.spec.name
        # A dying child closes its sockets a moment before it can be reaped: give the
        # watcher that moment, so the error can say the process died and why.
        if self.child is not None and exc.kind != "status" and self.child.wait_exit(0.5):
            return BackendError(self._death_message(self.child.returncode, self.child.tail()), model=model)
        if exc.kind == "status" and exc.status == 400:
            return InvalidRequest(exc.message, model=model)  # e.g. prompt beyond the context
        if exc.kind == "timeout":
            return BackendTimeout(exc.message, model=model)
        return BackendError(exc.message, model=model)


def fetch_json(
    upstream: ChatUpstream,
    url: str,
    body: dict[str, Any],
    *,
    timeout: tuple[float, float],
    label: str = "runtime",
    limit: int = 16 << 20,
) -> Any:
    """POST `body` and return the JSON answer (at most `limit` bytes); UpstreamFailure for
    an error status, a lost connection, a timeout or an answer that is not JSON."""
    try:
        response = upstream.request("POST", url, body=body, timeout=timeout)
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise UpstreamFailure("timeout", f"{label} did not answer in time: {exc}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise UpstreamFailure("connection", f"cannot reach {label}: {exc}") from exc
    try:
        data = read_capped(response, limit)
        if response.status >= 400:
            text = error_text(data)
            raise UpstreamFailure(
                "status", f"{label} answered {response.status}: {text}", status=response.status
            )
        return json.loads(data)
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise UpstreamFailure("timeout", f"{label} stalled: {exc}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise UpstreamFailure("connection", f"connection to {label} lost: {exc}") from exc
    except ValueError as exc:
        raise UpstreamFailure("parse", f"{label} sent an answer that is not JSON: {exc}") from exc
    finally:
        response.release_conn()
