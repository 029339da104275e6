"""The worker protocol of vLLM's router (`vllm-router`): GET /get_load and GET /health.

The router's load-aware policies poll each worker's `/get_load` for `{"load": N}` and
send new requests to the least loaded; its health checks call `/health`. Here N is the
sum of the `llmpool:num_requests_waiting` and `llmpool:num_requests_running` gauges
(`llmpool.telemetry.request_totals`): every job this pool owes, whether it waits for a
slot, waits for its model's load, or runs. `/health` follows readiness: 503 until the
start-up loads are done, so a router sends nothing to a pool still loading.

Both are open, like /healthz and /readyz: vllm-router 0.1.17 sends no key on its health
checks and load polls (not even its `--api-key`), so a keyed pool behind it would read as
down. They tell no more than /readyz already does: model states and a count.
"""

from __future__ import annotations

from typing import Any

from blueprints.context import pool
from blueprints.contract import Blueprint
from blueprints.response_schemas import LoadSchema, ReadySchema
from blueprints.responses import readiness
from llmpool.telemetry import request_totals

bp = Blueprint("router", __name__)


@bp.get("/get_load")
@bp.response(200, LoadSchema)
def get_load() -> dict[str, Any]:
    """Load for vLLM's router: jobs waiting (for a slot or a load) plus running"""
    waiting, running = request_totals(pool().models)
    return {"load": waiting + running, "waiting": waiting, "running": running}


@bp.get("/health")
@bp.response(200, ReadySchema)
@bp.alt_response(503, schema=ReadySchema, description="still loading")
def health() -> tuple[dict[str, Any], int]:
    """Health for vLLM's router: readiness (503 while the start-up loads run)"""
    return readiness()
