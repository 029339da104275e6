"""Anthropic's Messages API: POST /v1/messages and POST /v1/messages/count_tokens (the
APIs are `llmpool.serving.anthropic_api`). Errors take Anthropic's shape
(blueprints.errors); `x-api-key` is the same key as `Authorization: Bearer`
(blueprints.require_credentials)."""

from __future__ import annotations

from typing import Any

from flask import Response

from blueprints.anthropic_schemas import CountTokensRequestSchema, MessagesRequestSchema
from blueprints.contract import Blueprint
from blueprints.response_schemas import AnthropicMessageSchema, TokenCountSchema
from blueprints.responses import INFERENCE_ERRORS
from blueprints.serving import EVENT_STREAM, serve
from llmpool.serving.anthropic_api import CountTokensApi, MessagesApi

bp = Blueprint("anthropic", __name__)
MESSAGES = MessagesApi()
COUNT_TOKENS = CountTokensApi()


@bp.post("/v1/messages", errors=INFERENCE_ERRORS)
@bp.arguments(MessagesRequestSchema(), location="json", arg_name="body")
@bp.response(200, AnthropicMessageSchema)
@bp.alt_response(200, **EVENT_STREAM)
def create_message(body: dict[str, Any]) -> Response | dict[str, Any]:
    """Anthropic messages (JSON, or SSE with stream: true)"""
    return serve(MESSAGES, body)


@bp.post("/v1/messages/count_tokens", errors=INFERENCE_ERRORS)
@bp.arguments(CountTokensRequestSchema(), location="json", arg_name="body")
@bp.response(200, TokenCountSchema)
def count_tokens(body: dict[str, Any]) -> Response | dict[str, Any]:
    """Anthropic token count: the model's runtime reads the prompt as for an answer"""
    return serve(COUNT_TOKENS, {**body, "stream": False})
