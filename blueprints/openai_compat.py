"""OpenAI's Chat Completions: POST /v1/chat/completions (SPEC §3; the API is
`llmpool.serving.chat_api`). Errors take OpenAI's shape (blueprints.errors)."""

from __future__ import annotations

from flask import Blueprint, Response

from blueprints.schemas import ChatCompletionsRequestSchema
from blueprints.serving import serve
from llmpool.serving.chat_api import ChatApi

bp = Blueprint("openai_compat", __name__)
# One instance each: building a schema deep-copies its fields (measurable per request).
CHAT_SCHEMA = ChatCompletionsRequestSchema()
CHAT = ChatApi()


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    return serve(CHAT, CHAT_SCHEMA)
