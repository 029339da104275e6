"""Not in the real library: what the fake was asked to do, for the tests to inspect."""

from __future__ import annotations

from typing import Any

fake_calls: list[tuple[str, dict[str, Any]]] = []


def record(name: str, **kwargs: Any) -> None:
    fake_calls.append((name, kwargs))
