"""The bare Flask app of bench/floor.py: what gunicorn, its gevent worker and Flask cost
alone for a non-streamed chat request (read the JSON body, answer a fixed completion)."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

app = Flask(__name__)

ANSWER = {
    "id": "chatcmpl-floor",
    "object": "chat.completion",
    "created": 0,
    "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
}


@app.post("/v1/chat/completions")
def chat() -> Any:
    if not isinstance(request.get_json(), dict):
        return jsonify({"error": "a JSON object, please"}), 400
    return jsonify(ANSWER)


@app.get("/readyz")
def readyz() -> Any:
    return jsonify({"status": "ok"})
