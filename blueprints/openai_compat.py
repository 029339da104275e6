"""OpenAI's Chat Completions: POST /v1/chat/completions (SPEC §3; the API is
`llmpool.serving.chat_api`). Errors take OpenAI's shape (blueprints.errors)."""

from __future__ import annotations

from typing import Any

from flask import Response

from blueprints.contract import Blueprint
from blueprints.openai_schemas import ChatCompletionsRequestSchema
from blueprints.response_schemas import ChatCompletionSchema
from blueprints.responses import INFERENCE_ERRORS
from blueprints.serving import EVENT_STREAM, serve
from llmpool.serving.chat_api import ChatApi

bp = Blueprint("openai_compat", __name__)
CHAT = ChatApi()


@bp.post("/v1/chat/completions", errors=INFERENCE_ERRORS)
@bp.arguments(ChatCompletionsRequestSchema(), location="json", arg_name="body")
@bp.response(200, ChatCompletionSchema)
@bp.alt_response(200, **EVENT_STREAM)
def chat_completions(body: dict[str, Any]) -> Response | dict[str, Any]:
    """OpenAI chat completions (JSON, or SSE with stream: true)"""
    return serve(CHAT, body)
