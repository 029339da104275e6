"""Public inference API: POST /v1/responses, GET /v1/models, health probes."""

from __future__ import annotations

from typing import Any

from flask import Response

from blueprints.context import pool
from blueprints.contract import Blueprint
from blueprints.response_schemas import HealthSchema, ModelListSchema, ReadySchema, ResponseObjectSchema
from blueprints.schemas import ResponsesRequestSchema
from blueprints.serving import EVENT_STREAM, serve
from llmpool.serving.responses_api import ResponsesApi

bp = Blueprint("responses", __name__)
# Errors an inference route may answer beyond its body's (400, 413, 422).
INFERENCE_ERRORS = (401, 403, 404, 409, 429, 502, 504)
RESPONSES = ResponsesApi()


@bp.post("/v1/responses", errors=INFERENCE_ERRORS)
@bp.arguments(ResponsesRequestSchema(), location="json", arg_name="body")
@bp.response(200, ResponseObjectSchema)
@bp.alt_response(200, **EVENT_STREAM)
def create_response(body: dict[str, Any]) -> Response | dict[str, Any]:
    """Generate (JSON, or SSE with stream: true)"""
    return serve(RESPONSES, body)


@bp.get("/v1/models", errors=(401,))
@bp.response(200, ModelListSchema)
def list_models() -> dict[str, Any]:
    """Loaded models"""
    p = pool()
    ids = p.loaded_ids()
    # OpenAI's list also names the models a request would load (load_on_demand), marked
    # `loaded: false` (loaded entries keep their old shape); `models` stays the loaded ones.
    loadable = sorted(n for n, e in p.models.items() if e.spec.load_on_demand and n not in ids)
    # Each card says what requests the model takes (structured output, thinking, images).
    models = p.models
    data: list[dict[str, Any]] = [_card(models[i]) for i in ids]
    data += [{**_card(models[i]), "loaded": False} for i in loadable]
    return {"object": "list", "data": data, "models": ids}


def _card(entry: Any) -> dict[str, Any]:
    caps = entry.capabilities.row()
    return {"id": entry.name, "object": "model", "owned_by": "llm-pool", "capabilities": caps}


@bp.get("/healthz")
@bp.response(200, HealthSchema)
def healthz() -> dict[str, Any]:
    """Liveness"""
    return {"status": "ok"}


@bp.get("/readyz")
@bp.response(200, ReadySchema)
@bp.alt_response(503, schema=ReadySchema, description="still loading")
def readyz() -> tuple[dict[str, Any], int]:
    """Readiness: start-up loading finished"""
    return readiness()


def readiness() -> tuple[dict[str, Any], int]:
    """Whether the start-up loads are done (200) or not (503), with each model's state."""
    p = pool()
    states = {name: entry.state.value for name, entry in p.models.items()}
    return {"ready": p.ready, "models": states}, 200 if p.ready else 503
