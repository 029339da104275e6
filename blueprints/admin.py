"""Admin API under /v1/admin: model rows, load/unload, GPU memory."""

from __future__ import annotations

from typing import Any

from blueprints.body import raw_body
from blueprints.context import pool
from blueprints.contract import Blueprint
from blueprints.response_schemas import (
    AdminRowSchema,
    AdminRowsSchema,
    GpuMemorySchema,
    LogsSchema,
    MemorySchema,
    ReloadReportSchema,
)
from blueprints.schemas import (
    MAX_TAIL,
    LoadQuerySchema,
    LoadRequestSchema,
    LogsQuerySchema,
    UnloadQuerySchema,
)
from llmpool.config.loader import load_settings
from llmpool.greenbridge import call_blocking

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")
DEFAULT_TAIL = 200


@bp.get("/models", errors=(401,))
@bp.response(200, AdminRowsSchema)
def list_models() -> dict[str, Any]:
    """Every configured model"""
    return {"models": [entry.row() for entry in pool().models.values()]}


@bp.get("/models/<name>", errors=(401, 404))
@bp.response(200, AdminRowSchema)
def get_model(name: str) -> dict[str, Any]:
    """One model"""
    return pool().entry(name).row()


@bp.post("/models/<name>/load", errors=(401, 404, 409, 500))
@bp.arguments(LoadRequestSchema(), location="json", arg_name="body")
@bp.arguments(LoadQuerySchema(), location="query", arg_name="query")
@bp.response(200, AdminRowSchema, description="loaded")
@bp.alt_response(202, schema=AdminRowSchema, description="loading", success=True)
def load_model(name: str, body: dict[str, Any], query: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Load (optionally with replicas, target_inflight, overrides); ?wait=false answers 202"""
    wait = query["wait"]
    entry = pool().load(
        name,
        replicas=body["replicas"],
        target_inflight=body["target_inflight"],
        overrides=body["overrides"],
        has_body=bool(raw_body().strip()),
        wait=wait,
    )
    return entry.row(), 200 if wait else 202


@bp.post("/models/<name>/unload", errors=(401, 404, 409))
@bp.arguments(UnloadQuerySchema(), location="query", arg_name="query")
@bp.response(200, AdminRowSchema, description="unloaded")
def unload_model(name: str, query: dict[str, Any]) -> dict[str, Any]:
    """Unload (?force=true stops running jobs)"""
    return pool().unload(name, force=query["force"]).row()


@bp.get("/models/<name>/logs", errors=(401, 404))
@bp.arguments(LogsQuerySchema(), location="query", arg_name="query")
@bp.response(200, LogsSchema)
def model_logs(name: str, query: dict[str, Any]) -> dict[str, Any]:
    """The last lines each replica printed

    `since=N` (the `next` of an earlier answer) keeps only the lines printed after that
    answer, for following; with it, `tail` defaults to everything still buffered."""
    since, tail = query.get("since"), query.get("tail")
    if tail is None:
        tail = DEFAULT_TAIL if since is None else MAX_TAIL
    return pool().entry(name).logs(tail, since or 0)


@bp.get("/memory", errors=(401,))
@bp.response(200, MemorySchema)
def memory() -> dict[str, Any]:
    """Memory budgets per device: loaded models, reservations, free, waiting loads

    Per device: the budget, loaded models and their ledger estimates, reservations of
    loads in progress, the free remainder; the loads waiting; the swap count."""
    return pool().memory()


@bp.get("/gpu-memory", errors=(401,))
@bp.response(200, GpuMemorySchema)
def gpu_memory() -> dict[str, Any]:
    """NVML's view and per-model estimates"""
    return pool().gpu_memory()


@bp.post("/settings/reload", errors=(400, 401, 409))
@bp.response(200, ReloadReportSchema, description="what changed")
def reload_settings() -> dict[str, Any]:
    """Re-read the settings files, atomically

    Apply them atomically (SPEC §2): 200 with what changed, 400 invalid_settings, or 409
    settings_conflict with nothing applied."""
    new = call_blocking(load_settings)  # file reads, off the hub
    return pool().reload(new)
