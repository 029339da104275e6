"""Server-sent events framing: the only place SSE text is written."""

from __future__ import annotations

import json
from typing import Any

DONE_LINE = "data: [DONE]\n\n"  # OpenAI's end of stream


def data_line(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\n{data_line(data)}"


def comment(text: str) -> str:
    """A comment line: clients ignore it, proxies see traffic."""
    return f": {text}\n\n"
