"""JSON answers written by orjson (blueprints.json_provider) are the JSON Flask's own
provider writes; what orjson would write otherwise or refuses goes through Flask's."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from blueprints.json_provider import OrjsonProvider


@dataclasses.dataclass
class Point:
    x: int


def apps() -> tuple[Flask, Flask]:
    ours, theirs = Flask("ours"), Flask("theirs")
    ours.json = OrjsonProvider(ours)
    theirs.json = DefaultJSONProvider(theirs)
    theirs.json.sort_keys = False  # type: ignore[attr-defined]
    return ours, theirs


VALUES: list[Any] = [
    {"b": 1, "a": [1.5, None, True], "text": 'é ü 中文 🙂 "q" \\ \n'},
    {"lone": "\ud83d"},  # orjson refuses: Flask's provider writes it
    {"big": 2**70},  # beyond 64 bits: Flask's provider
    {"when": datetime.datetime(2026, 12, 7, 1, 2, 3, tzinfo=datetime.UTC)},  # HTTP date, as Flask
    {"point": Point(3)},
    [1, 2, 3],
]


@pytest.mark.parametrize("value", VALUES)
def test_an_answer_is_the_json_flasks_provider_writes(value: Any) -> None:
    ours, theirs = apps()
    with ours.app_context():
        mine = ours.json.response(value)
    with theirs.app_context():
        flasks = theirs.json.response(value)
    assert mine.mimetype == flasks.mimetype == "application/json"
    assert json.loads(mine.get_data()) == json.loads(flasks.get_data())
    assert list(json.loads(mine.get_data())) == list(json.loads(flasks.get_data()))  # key order
    assert mine.get_data().endswith(b"\n")


def test_utf8_text_is_written_as_is_and_ascii_byte_for_byte_as_before() -> None:
    ours, theirs = apps()
    with ours.app_context():
        assert ours.json.response({"t": "é"}).get_data() == '{"t":"é"}\n'.encode()
        plain = ours.json.response({"a": 1, "b": [None]}).get_data()
    with theirs.app_context():
        assert theirs.json.response({"a": 1, "b": [None]}).get_data() == plain


def test_debug_mode_keeps_flasks_indented_answers() -> None:
    ours, _ = apps()
    ours.debug = True
    with ours.app_context():
        assert ours.json.response({"a": 1}).get_data() == b'{\n  "a": 1\n}\n'
