"""What a pool does with the records of a worker that died inside a runtime (issue 19):
the next pool marks the model failed with the reason, loads it again as its settings say
after one death, keeps it failed and refuses it after two (at start-up, on demand and per
request) until an admin load, and counts every death in /metrics. The records come from
real processes that really died (tests/dying.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from blueprints import create_app
from llmpool.config.loader import load_settings
from llmpool.crashes import CrashWatch
from llmpool.pool import Pool
from llmpool.states import ModelState
from tests.dying import die
from tests.fakes import scripted_model


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def died(state_dir: Path, model: str, times: int) -> None:
    """`times` workers died generating `model`; a worker booted after each death but the
    last, which is the pool under test's to find."""
    for i in range(times):
        die(state_dir, "segv", model=model)
        if i < times - 1:
            CrashWatch(str(state_dir)).recover()


@pytest.fixture
def make_pool(write_settings: Callable[..., Path], state_dir: Path) -> Iterator[Callable[[], Pool]]:
    pools: list[Pool] = []

    def make() -> Pool:
        """A pool as the gunicorn worker builds it: crash records first (wsgi.py)."""
        write_settings(
            {
                "service": {"state_dir": str(state_dir)},
                "engine": {
                    "models": {
                        "crashy": scripted_model(),
                        "on-demand": scripted_model(enabled=False, load_on_demand=True),
                        "fine": scripted_model(),
                    }
                },
            }
        )
        pool = Pool(load_settings())
        pools.append(pool)
        pool.record_crashes()
        return pool

    yield make
    for pool in pools:
        pool.shutdown()


def client(pool: Pool) -> FlaskClient:
    return create_app(pool.settings, pool=pool, start_models=False).test_client()


def row(c: FlaskClient, name: str) -> dict[str, Any]:
    r = c.get(f"/v1/admin/models/{name}")
    assert r.status_code == 200
    return r.get_json()


def crash_metric(c: FlaskClient, model: str, signame: str) -> str | None:
    prefix = f'llmpool_worker_crashes_total{{model="{model}",signal="{signame}"}} '
    text = c.get("/metrics").get_data(as_text=True)
    return next((line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)), None)


def test_one_death_marks_the_model_failed_then_it_loads_again(
    make_pool: Callable[[], Pool], state_dir: Path
) -> None:
    died(state_dir, "crashy", 1)
    pool = make_pool()
    entry = pool.models["crashy"]
    assert entry.state is ModelState.FAILED
    assert entry.last_error is not None
    assert entry.last_error.startswith("the worker died of SIGSEGV while this model was generating (once in")
    pool.start()  # enabled, not quarantined: loaded again, as its settings say
    c = client(pool)
    crashed = row(c, "crashy")
    assert crashed["state"] == "loaded"
    assert crashed["worker_crashes"]["count"] == 1 and crashed["worker_crashes"]["quarantined"] is None
    assert crashed["worker_crashes"]["last"]["meaning"].startswith("SIGSEGV (segmentation fault")
    assert crash_metric(c, "crashy", "SIGSEGV") == "1.0"
    assert c.post("/v1/responses", json={"model": "crashy", "input": "hi"}).status_code == 200
    assert row(c, "fine")["worker_crashes"] == {"count": 0, "last": None, "quarantined": None}


def test_two_deaths_quarantine_the_model_until_an_admin_load(
    make_pool: Callable[[], Pool], state_dir: Path
) -> None:
    died(state_dir, "crashy", 2)
    pool = make_pool()
    pool.start()
    c = client(pool)
    crashed = row(c, "crashy")
    assert crashed["state"] == "failed"  # not loaded at start
    reason = crashed["worker_crashes"]["quarantined"]
    assert "died of SIGSEGV while this model was generating (2 times in 10 minutes)" in reason
    assert crashed["last_error"] == f"quarantined: {reason}. An admin load lifts the quarantine"
    refused = c.post("/v1/responses", json={"model": "crashy", "input": "hi"})
    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "model_failed" and "is quarantined" in error["message"]
    assert "/v1/admin/models/crashy/load" in error["message"]
    assert crash_metric(c, "crashy", "SIGSEGV") == "2.0"
    assert c.post("/v1/responses", json={"model": "fine", "input": "hi"}).status_code == 200
    loaded = c.post("/v1/admin/models/crashy/load")
    assert loaded.status_code == 200, loaded.get_json()
    assert row(c, "crashy")["worker_crashes"]["quarantined"] is None
    assert c.post("/v1/responses", json={"model": "crashy", "input": "hi"}).status_code == 200
    assert crash_metric(c, "crashy", "SIGSEGV") == "2.0"  # lifted, not forgotten


def test_a_quarantined_model_does_not_load_on_demand(make_pool: Callable[[], Pool], state_dir: Path) -> None:
    died(state_dir, "on-demand", 2)
    pool = make_pool()
    pool.start()
    c = client(pool)
    refused = c.post("/v1/responses", json={"model": "on-demand", "input": "hi"})
    assert refused.status_code == 409 and "quarantined" in refused.get_json()["error"]["message"]
    assert row(c, "on-demand")["state"] == "failed"
