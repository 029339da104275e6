"""Operator endpoints outside the admin prefix: GET /metrics (Prometheus text).

Behind the admin token when one is set (see `blueprints.ADMIN_PREFIXES`).
"""

from __future__ import annotations

from flask import Blueprint, Response

from blueprints.context import pool
from llmpool.telemetry import CONTENT_TYPE

bp = Blueprint("operations", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(pool().telemetry.exposition(), content_type=CONTENT_TYPE)
