"""Public inference API: POST /v1/responses, GET /v1/models, health probes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from blueprints.context import pool
from blueprints.schemas import ResponsesRequestSchema
from blueprints.serving import serve
from llmpool.serving.responses_api import ResponsesApi

bp = Blueprint("responses", __name__)
# One instance each: building a schema deep-copies its fields (measurable per request).
RESPONSES_SCHEMA = ResponsesRequestSchema()
RESPONSES = ResponsesApi()


@bp.post("/v1/responses")
def create_response() -> Response:
    return serve(RESPONSES, RESPONSES_SCHEMA)


@bp.get("/v1/models")
def list_models() -> Response:
    p = pool()
    ids = p.loaded_ids()
    # OpenAI's list also names the models a request would load (load_on_demand), marked
    # `loaded: false` (loaded entries keep their old shape); `models` stays the loaded ones.
    loadable = sorted(n for n, e in p.models.items() if e.spec.load_on_demand and n not in ids)
    data: list[dict[str, Any]] = [{"id": i, "object": "model", "owned_by": "llm-pool"} for i in ids]
    data += [{"id": i, "object": "model", "owned_by": "llm-pool", "loaded": False} for i in loadable]
    return jsonify({"object": "list", "data": data, "models": ids})


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    p = pool()
    states = {name: entry.state.value for name, entry in p.models.items()}
    response = jsonify({"ready": p.ready, "models": states})
    response.status_code = 200 if p.ready else 503
    return response
