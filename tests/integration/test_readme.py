"""The README's example requests run as written (curl against a real server)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Server, integration_settings, start_server, stop_server

pytestmark = pytest.mark.integration

README_URL = "http://127.0.0.1:8010"


def readme_shell_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> Iterator[Server]:
    # Its own server: the examples unload and reload the model with an override.
    srv = start_server(tmp_path_factory.mktemp("readme"), integration_settings())
    yield srv
    stop_server(srv)


def test_readme_has_the_examples() -> None:
    blocks = readme_shell_blocks()
    assert len(blocks) == 6
    assert "Translate to Dutch" in blocks[0] and '"stream": true' in blocks[1]
    assert "/v1/chat/completions" in blocks[2] and "/v1/completions" in blocks[3]


@pytest.mark.parametrize("index", range(6))
def test_readme_example_runs_as_written(readme_server: Server, index: int) -> None:
    assert shutil.which("curl"), "curl is needed to run the README examples"
    script = readme_shell_blocks()[index]
    assert README_URL in script
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(README_URL, readme_server.url)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"detail"' not in out, out  # no error body from any of the calls
    markers = [
        '"output_text"',
        "event: response.completed",
        '"chat.completion"',
        '"text_completion"',
        '"models"',
        '"gpus"',
    ]
    expected = markers[index]
    assert expected in out, out


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_the_python_examples() -> None:
    streaming, structured, messages = readme_python_blocks()
    assert "responses.stream" in streaming
    assert "chat.completions.parse" in structured and "responses.parse" in structured
    assert "messages.create" in messages and "messages.stream" in messages and "count_tokens" in messages


@pytest.mark.parametrize("index", range(3))
def test_readme_python_example_runs_as_written(readme_server: Server, index: int) -> None:
    block = readme_python_blocks()[index]
    assert README_URL in block
    result = subprocess.run(
        [sys.executable, "-c", block.replace(README_URL, readme_server.url)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) >= 2, result.stdout
    if index == 1:  # two parsed City objects (pydantic's repr: name='...' country='...')
        assert all("name=" in line and "population=" in line for line in lines), result.stdout
    if index == 2:  # the anthropic SDK: an answer with its stop reason, a stream, a count
        assert lines[0].endswith(("end_turn", "max_tokens")) and int(lines[-1]) > 0, result.stdout


def test_readme_quick_start_names_the_two_make_targets() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"
    assert Path(ROOT / "Makefile").read_text().count("\nrun:") == 1
