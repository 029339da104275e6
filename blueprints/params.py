"""`InvalidParam`: the 400 for a well-formed request field the pool cannot honour.

Its own module because both the request schemas (which refuse some values while they
parse) and the error renderer need it, and the renderer imports the schemas.
"""

from __future__ import annotations

from llmpool.errors import InvalidRequest


class InvalidParam(InvalidRequest):
    """A well-formed request for something the pool does not do (OpenAI's `n` > 1, tools,
    `store: true`, ...): 400, with `param` naming the offending field as OpenAI's error
    body does. Raised, never dropped: a client must not believe a setting took effect."""

    def __init__(self, param: str, message: str, code: str = "unsupported_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code
