"""`python -m bench --merge`: a partial re-run goes into the committed page, and the page
quotes the command that really ran (not "make bench" for a `--cases` run)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import CASES, invocation, merged


def test_the_page_quotes_the_command_that_ran() -> None:
    assert invocation(list(CASES), smoke=False) == "make bench"
    assert invocation(["proxy", "relay"], smoke=False) == "python -m bench --cases proxy,relay"
    assert invocation(list(CASES), smoke=True) == "python -m bench --smoke"
    assert invocation(["soak"], smoke=True) == "python -m bench --smoke --cases soak"


def test_a_merge_replaces_the_cases_run_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    old = {
        "meta": {"command": "make bench", "date": "2026-12-01 10:00 UTC"},
        "proxy": {"added_ms": 1.0},
        "relay": {"tokens": 1},
        "soak": {"rps": 5},
        "errors": {"relay": "RuntimeError: it broke"},
    }
    path.write_text(json.dumps(old))
    new = {
        "meta": {
            "command": "python -m bench --cases proxy,relay,soak",
            "date": "2026-12-07 05:00 UTC",
            "commits": {"proxy": "abc1234", "relay": "abc1234+changes"},  # where each case began
        },
        "proxy": {"added_ms": 0.5},
        "relay": {"tokens": 2},
        "errors": {"soak": "RuntimeError: no wrk"},
    }
    out = merged(path, new, ["proxy", "relay", "soak"])
    assert out["meta"] == old["meta"]  # the page's run stays the one named at the top
    note = out["proxy"].pop("rerun")
    assert note["command"] == "python -m bench --cases proxy,relay,soak"
    assert note["date"] == "2026-12-07 05:00 UTC" and note["commit"] == "abc1234"
    assert out["proxy"] == {"added_ms": 0.5}
    assert out["relay"]["tokens"] == 2 and out["relay"]["rerun"] == {**note, "commit": "abc1234+changes"}
    assert out["errors"] == {}  # relay's old failure is gone with its new figures
    assert out["soak"] == {"rps": 5}  # failed this time: the earlier figures stay, unmarked
