"""The one error hierarchy of the pool.

Every error a client can see is a `PoolError` subclass carrying its HTTP status and a
stable machine-readable `code`. The HTTP layer renders all of them in one handler, so
the core never returns error values and never guesses statuses from built-in exceptions.
"""

from __future__ import annotations


class PoolError(Exception):
    """Base of every client-visible error.

    `status` is the HTTP status, `code` the stable identifier clients switch on.
    `model` names the model the error concerns, when there is one.
    """

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.model = model
        self.headers = dict(headers or {})

    def to_detail(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "model": self.model}


class InternalError(PoolError):
    """A bug. The renderer logs the trace and never puts it in the body."""


def bug() -> InternalError:
    """What a client is told about a bug: nothing but that it happened."""
    return InternalError("internal server error")


class ConfigError(PoolError):
    """Settings files are invalid; raised at start-up and on reload (where the operator's
    request to apply them is refused: 400)."""

    status = 400
    code = "invalid_settings"


# 4xx: the request itself cannot be served as asked.
class UnknownModel(PoolError):
    status = 404
    code = "unknown_model"


class ModelNotLoaded(PoolError):
    status = 409
    code = "model_not_loaded"


class ModelLoading(PoolError):
    status = 409
    code = "model_loading"


class ModelUnloading(PoolError):
    status = 409
    code = "model_unloading"


class ModelFailed(PoolError):
    status = 409
    code = "model_failed"


class SettingsConflict(PoolError):
    """A settings reload that would change something in use; nothing was applied."""

    status = 409
    code = "settings_conflict"

    def __init__(self, message: str, conflicts: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.conflicts = conflicts

    def to_detail(self) -> dict[str, object]:
        return {**super().to_detail(), "conflicts": self.conflicts}


class RemoteNotAllowed(PoolError):
    status = 403
    code = "remote_not_allowed"


class MediaForbidden(PoolError):
    status = 403
    code = "media_forbidden"


class ModalityUnsupported(PoolError):
    status = 400
    code = "modality_unsupported"


class MultiTurnUnsupported(PoolError):
    status = 400
    code = "multi_turn_unsupported"


class ThinkingUnsupported(PoolError):
    status = 400
    code = "thinking_unsupported"


class InvalidLoadRequest(PoolError):
    status = 400
    code = "invalid_load_request"


class Unauthorized(PoolError):
    """Missing or wrong credentials (SPEC §8). The message never echoes what was sent."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        # RFC 6750: a bearer-protected resource names its scheme in the challenge.
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="llm-pool"'})


class RequestTooLarge(PoolError):
    status = 413
    code = "request_too_large"


class InvalidRequest(PoolError):
    """A request that passed the schema but breaks a model-specific rule."""

    status = 400
    code = "invalid_request"


class InvalidParam(InvalidRequest):
    """A well-formed request for something the pool does not do (OpenAI's `n` > 1, tools,
    `store: true`, ...): 400, with `param` naming the offending field as OpenAI's error
    body does. Raised, never dropped: a client must not believe a setting took effect."""

    def __init__(self, param: str, message: str, code: str = "unsupported_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class QueueFull(PoolError):
    status = 429
    code = "queue_full"

    def __init__(self, message: str, *, model: str | None = None, retry_after_s: int = 1):
        super().__init__(message, model=model, headers={"Retry-After": str(retry_after_s)})


# 5xx: the pool or a runtime failed.
class BackendError(PoolError):
    status = 502
    code = "backend_error"


class OutputSchemaViolation(PoolError):
    """The answer of a request for structured output is not what was asked (not JSON, or
    invalid against its schema): it is never passed on as a valid answer."""

    status = 502
    code = "output_schema_violation"


class BackendTimeout(PoolError):
    status = 504
    code = "backend_timeout"


class ModelLoadFailed(PoolError):
    status = 500
    code = "model_load_failed"


class InsufficientMemory(PoolError):
    """A load on demand waited past its bound for memory (or can never fit its budget);
    the message names the models that hold the memory. `holders` is the same as data."""

    status = 503
    code = "insufficient_memory"

    def __init__(self, message: str, *, model: str | None = None, holders: list[str] | None = None):
        super().__init__(message, model=model, headers={"Retry-After": "30"})
        self.holders = list(holders or [])


class JobCancelled(PoolError):
    """The job was cancelled (client gone, forced unload); never rendered to that client."""

    status = 499
    code = "cancelled"


class ClientGone(JobCancelled):
    """The client hung up while its request waited; nobody reads the answer."""


class RequestFieldInvalid(PoolError):
    """A request field breaks a rule only the core can check (e.g. a model's token limit).

    Rendered in the same 422 shape as schema errors, so clients see one format.
    """

    status = 422
    code = "validation_error"

    def __init__(self, loc: list[str | int], msg: str, type_: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.type = type_


# Remote upstreams (openai_remote): what the provider did, in the pool's terms.
class UpstreamAuthentication(BackendError):
    code = "upstream_authentication"


class UpstreamRateLimit(BackendError):
    status = 429
    code = "upstream_rate_limit"


class UpstreamInvalidRequest(BackendError):
    code = "upstream_invalid_request"


class UpstreamServerError(BackendError):
    code = "upstream_server_error"


class UpstreamTimeout(BackendError):
    status = 504
    code = "upstream_timeout"


class UpstreamConnection(BackendError):
    code = "upstream_connection"


class UpstreamParse(BackendError):
    code = "upstream_parse"
