"""Admin API under /v1/admin: model rows, load/unload, GPU memory."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from blueprints.responses import json_body, pool
from blueprints.schemas import LoadRequestSchema
from llmpool.errors import RequestFieldInvalid

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")
LOAD_SCHEMA = LoadRequestSchema()


def _flag(name: str, default: bool) -> bool:
    value = request.args.get(name)
    if value is None:
        return default
    return value.lower() in ("1", "true", "yes", "on")


@bp.get("/models")
def list_models() -> Response:
    return jsonify({"models": [entry.row() for entry in pool().models.values()]})


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    return jsonify(pool().entry(name).row())


@bp.post("/models/<name>/load")
def load_model(name: str) -> Response:
    has_body = bool(request.get_data())
    body = LOAD_SCHEMA.load(json_body() if has_body else {})
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
    """The last `tail` lines each replica's child printed (kept after unload or failure)."""
    raw = request.args.get("tail", "200")
    if not raw.isdigit() or int(raw) > 100_000:
        raise RequestFieldInvalid(["query", "tail"], "Must be an integer from 0 to 100000.", "value_error")
    entry = pool().entry(name)
    replicas = [{"id": r.replica_id, "pid": r.pid(), "lines": r.logs(int(raw))} for r in entry.last_runtimes]
    return jsonify({"name": name, "replicas": replicas})


@bp.get("/gpu-memory")
def gpu_memory() -> Response:
    return jsonify(pool().gpu_memory())
