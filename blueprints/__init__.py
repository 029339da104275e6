"""HTTP layer: the Flask app factory and its blueprints (parse -> core -> serialise)."""

from __future__ import annotations

import atexit
import logging
import os

from flask import Flask, request

from blueprints import (
    admin,
    anthropic,
    completions,
    observe,
    openai_compat,
    openapi,
    operations,
    responses,
    router,
)
from blueprints.contract import make_api
from blueprints.errors import register_error_handlers
from blueprints.json_provider import OrjsonProvider
from llmpool.auth import Access, Credentials, credentials_from
from llmpool.config.loader import startup_settings
from llmpool.config.spec import Settings
from llmpool.greenbridge import check_not_fully_patched
from llmpool.pool import Pool
from llmpool.serving.pipeline import Pipeline


def create_app(
    settings: Settings | None = None,
    *,
    pool: Pool | None = None,
    start_models: bool = True,
    record_crashes: bool = False,
) -> Flask:
    """Build the app around a pool.

    `settings` defaults to the start-up settings (read once, by the gunicorn master when
    there is one; see llmpool.config.loader); `start_models` loads the
    enabled models in the background, and /readyz turns 200 once that is done.
    `record_crashes` (the gunicorn worker, wsgi.py): explain a previous worker's death
    inside a runtime and record this one's work (llmpool.crashes), before any model loads.
    """
    check_not_fully_patched()  # a stock gevent worker would turn the scheduler into greenlets
    settings = settings or startup_settings()
    # Before the pool exists: a named secret that is missing stops start-up (fail closed).
    credentials = credentials_from(settings.service, os.environ)
    pool = pool or Pool(settings)
    logging.basicConfig(
        level=settings.service.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(settings.service.max_body_mb * 1024 * 1024)
    app.json = OrjsonProvider(app)
    app.extensions["llmpool"] = pool
    app.extensions["llmpool.pipeline"] = Pipeline(pool)
    # Each route declares its contract; the API object parses by it and documents it.
    api = app.extensions["llmpool.api"] = make_api(app)
    for blueprint in (
        responses.bp,
        openai_compat.bp,
        completions.bp,
        anthropic.bp,
        admin.bp,
        operations.bp,
        router.bp,
        openapi.bp,
    ):
        api.register_blueprint(blueprint)
    register_error_handlers(app)  # after the API's: ours render every error
    observe.setup_access_log(settings.service.log_level)
    observe.install(app, pool, settings.service.log_prompts)  # first: it times the rest
    require_credentials(app, credentials)
    # gunicorn's worker_exit hook shuts the pool down; this covers `flask run` and tests.
    atexit.register(pool.shutdown)
    if record_crashes:
        pool.record_crashes()
    if start_models:
        pool.start_in_background()
    return app


# Endpoints anyone may call: a load balancer's probes carry no token, and neither do vLLM's
# router's health checks and load polls (blueprints.router).
OPEN_ENDPOINTS = frozenset({"responses.healthz", "responses.readyz", "router.health", "router.get_load"})
ADMIN_PREFIXES = ("/v1/admin", "/metrics")


def access_for(endpoint: str | None, blueprint: str | None, path: str) -> Access:
    """Admin by blueprint or path prefix (so an unmatched admin path is closed too), open
    for the probes, public for everything else, including paths that match no route."""
    if blueprint == admin.bp.name or path.startswith(ADMIN_PREFIXES):
        return Access.ADMIN
    if endpoint in OPEN_ENDPOINTS:
        return Access.OPEN
    return Access.PUBLIC


def require_credentials(app: Flask, credentials: Credentials) -> None:
    """Check the bearer token before any view runs; a refusal is rendered by the error
    handlers in the route's own shape (401 with `WWW-Authenticate: Bearer`)."""
    app.extensions["llmpool.credentials"] = credentials

    @app.before_request
    def _authenticate() -> None:
        access = access_for(request.endpoint, request.blueprint, request.path)
        credentials.check(access, request.headers.get("Authorization"), request.headers.get("x-api-key"))
