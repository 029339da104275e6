"""The memory ledger: estimates before and after a measurement, keys, the state file."""

from __future__ import annotations

import json
from pathlib import Path

from llmpool.placement.ledger import ARTIFACT_FACTOR, FILE_NAME, Ledger, load_key

MIB = 1024 * 1024
PLAN = {"replicas": 1, "target_inflight": 1, "overrides": {}}


def test_before_a_measurement_the_artifact_times_the_factor_per_replica(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    one = ledger.estimate("m", load_key({"a": 1}, PLAN), 100 * MIB)
    assert (one.mib, one.source) == (100 * ARTIFACT_FACTOR, "artifact_size")
    two = ledger.estimate("m", load_key({"a": 1}, {**PLAN, "replicas": 2}), 100 * MIB, replicas=2)
    assert two.mib == 200 * ARTIFACT_FACTOR
    assert ledger.estimate("m", "k", None).source == "unknown"


def test_a_measurement_is_kept_per_definition_and_plan_across_restarts(tmp_path: Path) -> None:
    key = load_key({"model_path": "/a"}, PLAN)
    Ledger(str(tmp_path)).record("m", key, 123.456, "child_rss")
    again = Ledger(str(tmp_path))
    got = again.estimate("m", key, 999 * MIB)
    assert (got.mib, got.source, got.how) == (123.5, "measured", "child_rss")
    # Another definition or another plan is another key: not measured yet.
    assert again.estimate("m", load_key({"model_path": "/b"}, PLAN), MIB).source == "artifact_size"
    bigger = {**PLAN, "overrides": {"gguf_n_ctx": 8192}}
    assert again.estimate("m", load_key({"model_path": "/a"}, bigger), MIB).source == "artifact_size"
    assert json.loads((tmp_path / FILE_NAME).read_text())["version"] == 1


def test_an_unreadable_file_is_set_aside_and_learning_starts_again(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("{not json")
    ledger = Ledger(str(tmp_path))
    assert ledger.estimate("m", "k", None).source == "unknown"
    assert (tmp_path / (FILE_NAME + ".bad")).read_text() == "{not json"
    ledger.record("m", "k", 1.0, "rss_delta")
    assert json.loads((tmp_path / FILE_NAME).read_text())["models"]["m"]["k"]["mib"] == 1.0


def test_an_unwritable_state_dir_keeps_the_ledger_in_memory(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    ledger = Ledger(str(blocked / "sub"))  # a directory below a file cannot be made
    ledger.record("m", "k", 5.0, "rss_delta")
    assert ledger.estimate("m", "k", None).mib == 5.0
