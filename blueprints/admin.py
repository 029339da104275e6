"""Admin API under /v1/admin: model rows, load/unload, GPU memory."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from blueprints.body import json_body, raw_body
from blueprints.context import pool
from blueprints.schemas import LoadRequestSchema
from llmpool.config.loader import load_settings
from llmpool.errors import RequestFieldInvalid
from llmpool.greenbridge import call_blocking

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")
LOAD_SCHEMA = LoadRequestSchema()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
MAX_TAIL = 100_000
MAX_SEQ = 2**53  # line numbers stay exact as JSON numbers in every client


def _flag(name: str, default: bool) -> bool:
    """A boolean query parameter; anything but the usual spellings is a 422, so a typo
    such as `force=ture` is not silently read as false."""
    value = request.args.get(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    message = "Must be true or false (or 1/0, yes/no, on/off)."
    raise RequestFieldInvalid(["query", name], message, "value_error")


def _count(name: str, default: int, maximum: int) -> int:
    """A non-negative integer query parameter (ASCII digits only: `str.isdigit` also
    accepts '²', which int() refuses)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > maximum:
        raise RequestFieldInvalid(["query", name], f"Must be an integer from 0 to {maximum}.", "value_error")
    return int(raw)


@bp.get("/models")
def list_models() -> Response:
    return jsonify({"models": [entry.row() for entry in pool().models.values()]})


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    return jsonify(pool().entry(name).row())


@bp.post("/models/<name>/load")
def load_model(name: str) -> Response:
    has_body = bool(raw_body().strip())
    body = LOAD_SCHEMA.load(json_body(optional=True))
    wait = _flag("wait", True)
    entry = pool().load(
        name,
        replicas=body["replicas"],
        target_inflight=body["target_inflight"],
        overrides=body["overrides"],
        has_body=has_body,
        wait=wait,
    )
    response = jsonify(entry.row())
    response.status_code = 200 if wait else 202
    return response


@bp.post("/models/<name>/unload")
def unload_model(name: str) -> Response:
    entry = pool().unload(name, force=_flag("force", False))
    return jsonify(entry.row())


@bp.get("/models/<name>/logs")
def model_logs(name: str) -> Response:
    """The last `tail` lines each replica's child printed (kept after unload or failure).

    `since=N` (the `next` of an earlier answer) keeps only the lines printed after that
    answer, for following; with it, `tail` defaults to everything still buffered."""
    since = _count("since", 0, MAX_SEQ)
    tail = _count("tail", MAX_TAIL if "since" in request.args else 200, MAX_TAIL)
    return jsonify(pool().entry(name).logs(tail, since))


@bp.get("/memory")
def memory() -> Response:
    """Per device: the budget, loaded models and their ledger estimates, reservations of
    loads in progress, the free remainder; the loads waiting; the swap count."""
    return jsonify(pool().memory())


@bp.get("/gpu-memory")
def gpu_memory() -> Response:
    return jsonify(pool().gpu_memory())


@bp.post("/settings/reload")
def reload_settings() -> Response:
    """Re-read the settings files and apply them atomically (SPEC §2): 200 with what
    changed, 400 invalid_settings, or 409 settings_conflict with nothing applied."""
    new = call_blocking(load_settings)  # file reads, off the hub
    return jsonify(pool().reload(new))
