"""Server-sent events framing: the only place SSE text is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring_ascii  # what json.dumps uses for one str
from typing import Any

import orjson

DONE_LINE = "data: [DONE]\n\n"  # OpenAI's end of stream


def dumps(data: Any) -> str:
    """Compact JSON: orjson (a tenth of `json.dumps`' time on a response event), which
    writes non-ASCII text as UTF-8; `json` for what orjson refuses (a lone surrogate in a
    runtime's text, an integer beyond 64 bits), which escapes it. Either is the same JSON."""
    try:
        return orjson.dumps(data).decode()
    except TypeError:
        return json.dumps(data, separators=(",", ":"))


def dumps_str(text: str) -> str:
    """One string as `dumps` writes it inside an event. ASCII text (most tokens) in one C
    call: for ASCII but DEL, which orjson leaves raw, `json`'s escapes are orjson's, byte for
    byte."""
    if text.isascii() and "\x7f" not in text:
        return encode_basestring_ascii(text)
    try:
        return orjson.dumps(text).decode()
    except TypeError:
        return encode_basestring_ascii(text)


def data_line(data: Any) -> str:
    return f"data: {dumps(data)}\n\n"


def frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\n{data_line(data)}"


def comment(text: str) -> str:
    """A comment line: clients ignore it, proxies see traffic."""
    return f": {text}\n\n"


def slot(index: int) -> str:
    """A placeholder for field `index` of a `Template`, put where the value goes."""
    return f"\ue000slot{index}\ue000"


class Template:
    """One kind of event whose text is rendered once per stream, with placeholders where
    the values that change from event to event go (a token's text, a sequence number).

    A token's event is then a few string joins instead of building its dict and encoding
    all of it (most of the relay's cost per token, bench/README.md). `render` is the code
    that writes the whole event, called with `slot(i)` for each of the `count` values, so
    the text filled in is the very text that rendering each event would give: strings are
    encoded as `dumps` encodes them (`dumps_str`), integers as their digits. (A lone
    surrogate sends a whole event through `json`, which escapes its other non-ASCII text
    too; filled in, only the value is escaped: the same JSON.)
    Each `fill_*` method is one shape of values, written out: this is the hot path.
    """

    __slots__ = ("_parts",)

    def __init__(self, render: Callable[..., str], count: int) -> None:
        text = render(*(slot(i) for i in range(count)))
        parts: list[str] = []
        for i in range(count):
            marker = dumps_str(slot(i))
            head, found, text = text.partition(marker)
            if not found or marker in text or marker in head:
                raise ValueError(f"placeholder {i} must appear exactly once in the rendered event")
            parts.append(head)
        parts.append(text)
        self._parts = tuple(parts)

    def fill_text(self, text: str) -> str:
        """The event of a template with one value, a string."""
        head, tail = self._parts
        # `dumps_str`'s ASCII case inline: this runs once per relayed token.
        ascii_ = text.isascii() and "\x7f" not in text
        return head + (encode_basestring_ascii(text) if ascii_ else dumps_str(text)) + tail

    def fill_numbered(self, number: int, text: str) -> str:
        """The event of a template with two values: an integer, then a string."""
        head, middle, tail = self._parts
        ascii_ = text.isascii() and "\x7f" not in text
        value = encode_basestring_ascii(text) if ascii_ else dumps_str(text)
        return head + str(number) + middle + value + tail
