"""OpenAI's legacy Completions: POST /v1/completions (a raw prompt, no chat template; the
API is `llmpool.serving.completions_api`). Errors take OpenAI's shape (blueprints.errors)."""

from __future__ import annotations

from flask import Blueprint, Response

from blueprints.schemas import CompletionsRequestSchema
from blueprints.serving import serve
from llmpool.serving.completions_api import CompletionsApi

bp = Blueprint("completions", __name__)
COMPLETIONS_SCHEMA = CompletionsRequestSchema()
COMPLETIONS = CompletionsApi()


@bp.post("/v1/completions")
def completions() -> Response:
    return serve(COMPLETIONS, COMPLETIONS_SCHEMA)
