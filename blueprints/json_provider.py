"""Flask's JSON answers written by orjson.

`jsonify` (every JSON answer and error) encodes with `json.dumps`, about a tenth of a
millisecond on a chat completion's answer on this machine, where orjson takes a few µs
(bench/README.md). orjson keeps the keys in order (the pool never sorts them) and writes
non-ASCII text as UTF-8 instead of escapes: the same JSON. What orjson would write
differently from Flask's provider, or refuses, goes through that provider unchanged:
dates and dataclasses (Flask writes HTTP dates and `asdict`), anything it cannot encode
(a lone surrogate, an integer beyond 64 bits, an unknown type), and debug mode's indented
output.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response as AnyResponse

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_APPEND_NEWLINE


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


class OrjsonProvider(DefaultJSONProvider):
    sort_keys = False

    def response(self, *args: Any, **kwargs: Any) -> AnyResponse:
        if self.compact is False or (self.compact is None and self._app.debug):
            return super().response(*args, **kwargs)
        obj = self._prepare_response_obj(args, kwargs)
        try:
            body = orjson.dumps(obj, default=_refuse, option=_OPTIONS)
        except TypeError:
            return super().response(obj)
        return Response(body, mimetype=self.mimetype)  # the pool sets no response_class of its own
