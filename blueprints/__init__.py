"""HTTP layer: the Flask app factory and its blueprints (parse -> core -> serialise)."""

from __future__ import annotations

import atexit
import logging

from flask import Flask

from blueprints import admin, openai_compat, responses
from blueprints.errors import register_error_handlers
from llmpool.config.loader import load_settings
from llmpool.config.spec import Settings
from llmpool.greenbridge import check_not_fully_patched
from llmpool.pool import Pool


def create_app(
    settings: Settings | None = None, *, pool: Pool | None = None, start_models: bool = True
) -> Flask:
    """Build the app around a pool.

    `settings` defaults to the files (see llmpool.config.loader); `start_models` loads the
    enabled models in the background, and /readyz turns 200 once that is done.
    """
    check_not_fully_patched()  # a stock gevent worker would turn the scheduler into greenlets
    settings = settings or load_settings()
    pool = pool or Pool(settings)
    logging.basicConfig(
        level=str(settings.service["log_level"]).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(settings.service["max_body_mb"] * 1024 * 1024)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["llmpool"] = pool
    app.register_blueprint(responses.bp)
    app.register_blueprint(openai_compat.bp)
    app.register_blueprint(admin.bp)
    register_error_handlers(app)
    # gunicorn's worker_exit hook shuts the pool down; this covers `flask run` and tests.
    atexit.register(pool.shutdown)
    if start_models:
        pool.start_in_background()
    return app
