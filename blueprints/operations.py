"""Operator endpoints outside the admin prefix: GET /metrics (Prometheus text).

Behind the admin token when one is set (see `blueprints.ADMIN_PREFIXES`).
"""

from __future__ import annotations

from flask import Response

from blueprints.context import pool
from blueprints.contract import Blueprint
from llmpool.telemetry import CONTENT_TYPE

bp = Blueprint("operations", __name__)


@bp.get("/metrics", errors=(401,))
@bp.response(200, {"type": "string"}, content_type="text/plain", description="text exposition")
def metrics() -> Response:
    """Prometheus metrics"""
    return Response(pool().telemetry.exposition(), content_type=CONTENT_TYPE)
