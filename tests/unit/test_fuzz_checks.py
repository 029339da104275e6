"""The fuzzer's server-error check (tests/fuzz_checks.py): one documented 5xx passes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.fuzz_checks import no_server_error


def answer(status: int, body: object) -> SimpleNamespace:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return SimpleNamespace(status_code=status, content=content)


def detail(code: str) -> dict[str, object]:
    return {"detail": {"code": code, "message": "m", "model": "x"}}


@pytest.mark.parametrize(
    "status, body", [(200, {}), (422, {"detail": []}), (502, detail("output_schema_violation"))]
)
def test_answers_and_the_documented_model_output_error_pass(status: int, body: object) -> None:
    no_server_error(None, answer(status, body), None)


@pytest.mark.parametrize(
    "status, body",
    [
        (500, detail("internal_error")),
        (502, detail("backend_error")),
        (504, detail("output_schema_violation")),
        (502, b"<html>Bad Gateway</html>"),
        (503, {"detail": "not an object"}),
    ],
)
def test_every_other_server_error_fails(status: int, body: object) -> None:
    with pytest.raises(AssertionError, match=f"server error {status}"):
        no_server_error(None, answer(status, body), None)
