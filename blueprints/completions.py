"""OpenAI's legacy Completions: POST /v1/completions (a raw prompt, no chat template; the
API is `llmpool.serving.completions_api`). Errors take OpenAI's shape (blueprints.errors)."""

from __future__ import annotations

from typing import Any

from flask import Response

from blueprints.contract import Blueprint
from blueprints.openai_schemas import CompletionsRequestSchema
from blueprints.response_schemas import TextCompletionSchema
from blueprints.responses import INFERENCE_ERRORS
from blueprints.serving import EVENT_STREAM, serve
from llmpool.serving.completions_api import CompletionsApi

bp = Blueprint("completions", __name__)
COMPLETIONS = CompletionsApi()


@bp.post("/v1/completions", errors=INFERENCE_ERRORS)
@bp.arguments(CompletionsRequestSchema(), location="json", arg_name="body")
@bp.response(200, TextCompletionSchema)
@bp.alt_response(200, **EVENT_STREAM)
def completions(body: dict[str, Any]) -> Response | dict[str, Any]:
    """OpenAI (legacy) completions of a raw prompt (JSON, or SSE with stream: true)"""
    return serve(COMPLETIONS, body)
