"""The app's pool and serving pipeline, for views (set up by `create_app`)."""

from __future__ import annotations

from flask import current_app

from llmpool.pool import Pool
from llmpool.serving.pipeline import Pipeline


def pool() -> Pool:
    return current_app.extensions["llmpool"]


def pipeline() -> Pipeline:
    return current_app.extensions["llmpool.pipeline"]
