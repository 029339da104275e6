"""The placer's policy, on scripted runtimes whose load time and memory are set per test.

Each scripted model declares 60 MiB (its weights file is a sparse 40 MiB, so the ledger's
first estimate is 40 x 1.5 = 60 too). The real-runtime side is
tests/integration/test_placement.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from llmpool.placement.ledger import Ledger
from tests.fakes import scripted_model
from tests.http.conftest import sse_events

MIB = 1024 * 1024


def sparse(path: Path, mib: int) -> str:
    with path.open("wb") as f:
        f.truncate(mib * MIB)
    return str(path)


@pytest.fixture
def weights(tmp_path: Path) -> str:
    return sparse(tmp_path / "weights.bin", 40)


@pytest.fixture
def big(tmp_path: Path) -> str:
    """Weights of a model that needs 105 MiB first (70 x 1.5), 100 measured."""
    return sparse(tmp_path / "big.bin", 70)


def on_demand(weights: str, **options: Any) -> dict[str, Any]:
    defaults = {"scripted_memory_mib": 60.0, "scripted_tokens": 3, "scripted_delay_s": 0.0}
    return scripted_model(enabled=False, load_on_demand=True, model_path=weights, **{**defaults, **options})


def settings(tmp_path: Path, models: dict[str, Any], **service: Any) -> dict[str, Any]:
    return {
        "service": {
            "state_dir": str(tmp_path / "state"),
            "memory_budget_mib": {"host": 130},
            "swap_max_wait_s": 60,
            "memory_wait_timeout_s": 60,
            **service,
        },
        "engine": {"models": models},
    }


def ask(client: FlaskClient, model: str, **extra: Any) -> Any:
    return client.post("/v1/responses", json={"model": model, "input": "hi", **extra})


def state(client: FlaskClient, model: str) -> str:
    return str(client.get(f"/v1/admin/models/{model}").get_json()["state"])


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    return thread, out


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_the_least_recently_used_idle_model_is_evicted(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    models = {name: on_demand(weights) for name in ("x", "y", "z")}
    client = make_app(settings(tmp_path, models)).test_client()
    assert client.get("/v1/admin/models/x").get_json()["memory"]["estimate_mib"] == 60.0
    assert ask(client, "x").status_code == 200
    assert ask(client, "y").status_code == 200  # 120 of 130 MiB: both fit
    assert ask(client, "x").status_code == 200  # x used last: y is the least recently used
    assert ask(client, "z").status_code == 200
    assert [state(client, m) for m in ("x", "y", "z")] == ["loaded", "unloaded", "loaded"]
    view = client.get("/v1/admin/memory").get_json()
    host = view["devices"][0]
    assert host["device"] == "host" and host["budget_mib"] == 130
    assert sorted(m["model"] for m in host["loaded"]) == ["x", "z"]
    assert host["used_mib"] == 120 and host["free_mib"] == 10
    assert view["swaps"] == 1
    row = client.get("/v1/admin/models/z").get_json()
    assert row["memory"] == {
        "device": "host",
        "estimate_mib": 60.0,
        "source": "measured",
        "how": "runtime",
        "measured_at": row["memory"]["measured_at"],
    }


def test_a_failed_load_fails_every_waiting_request(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    broken = on_demand(weights, replicas=2, replica_max=2, scripted_fail_load=True, scripted_load_s=0.3)
    app = make_app(settings(tmp_path, {"broken": broken}))
    calls = [in_thread(lambda: ask(app.test_client(), "broken")) for _ in range(3)]
    for thread, _ in calls:
        thread.join(10)
    for _, out in calls:
        assert out[0].status_code == 500
        assert out[0].get_json()["detail"]["code"] == "model_load_failed"
        assert "replica refused to start" in out[0].get_json()["detail"]["message"]


def test_a_stream_says_the_model_is_loading(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    client = make_app(settings(tmp_path, {"x": on_demand(weights, scripted_load_s=1.3)})).test_client()
    body = ask(client, "x", stream=True).get_data(as_text=True)
    comments = [data for name, data in sse_events(body) if name == "comment"]
    assert comments[0].startswith("loading x ")
    assert any(c.startswith("loading x 1.") for c in comments), comments
    assert [name for name, _ in sse_events(body)][-1] == "response.completed"


def test_a_load_in_progress_is_reserved_in_the_memory_view(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    app = make_app(settings(tmp_path, {"x": on_demand(weights, scripted_load_s=1.0)}))
    client = app.test_client()
    thread, out = in_thread(lambda: ask(app.test_client(), "x"))
    wait_for(lambda: state(client, "x") == "loading")
    host = client.get("/v1/admin/memory").get_json()["devices"][0]
    assert host["reserved"] == [{"model": "x", "mib": 60.0}]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'llmpool_waiting_for_load{model="x"} 1.0' in metrics
    assert "llmpool:num_requests_waiting 1.0" in metrics
    assert host["free_mib"] == 70.0
    thread.join(10)
    assert out[0].status_code == 200


def test_a_busy_model_keeps_serving_then_is_drained_after_the_maximum_wait(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str, big: str
) -> None:
    models = {
        "x": on_demand(weights, scripted_tokens=300, scripted_delay_s=0.01, target_inflight=2),
        "y": on_demand(big, scripted_memory_mib=100.0),
    }
    app = make_app(settings(tmp_path, models, swap_max_wait_s=0.5))
    client = app.test_client()
    assert ask(client, "x", decoding={"max_tokens": 1}).status_code == 200
    first, first_out = in_thread(lambda: ask(app.test_client(), "x"))  # 3 s of work
    wait_for(lambda: client.get("/v1/admin/models/x").get_json()["inflight"] == 1)
    waiter, waiter_out = in_thread(lambda: ask(app.test_client(), "y"))
    time.sleep(0.2)
    # Before the maximum wait, x still takes new work (no thrash)...
    assert client.get("/v1/admin/models/x").get_json()["state"] == "loaded"
    second, second_out = in_thread(lambda: ask(app.test_client(), "x", decoding={"max_tokens": 1}))
    second.join(10)
    assert second_out[0].status_code == 200
    assert state(client, "y") == "unloaded"
    # ...after it, x takes no more: a third request for x waits for x's next load.
    time.sleep(0.6)
    third, third_out = in_thread(lambda: ask(app.test_client(), "x", decoding={"max_tokens": 1}))
    time.sleep(0.2)
    assert third.is_alive()
    for thread in (first, waiter, third):
        thread.join(15)
    assert [o[0].status_code for o in (first_out, waiter_out, third_out)] == [200, 200, 200]
    assert client.get("/v1/admin/memory").get_json()["swaps"] == 2  # x out for y, y out for x
    assert state(client, "x") == "loaded" and state(client, "y") == "unloaded"


def test_memory_held_by_a_pinned_model_ends_in_503_naming_it(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str, big: str
) -> None:
    models = {"keeper": on_demand(weights, pinned=True), "y": on_demand(big, scripted_memory_mib=100.0)}
    client = make_app(settings(tmp_path, models, memory_wait_timeout_s=0.5)).test_client()
    assert ask(client, "keeper").status_code == 200
    started = time.monotonic()
    r = ask(client, "y")
    assert time.monotonic() - started >= 0.5
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "30"
    detail = r.get_json()["detail"]
    assert detail["code"] == "insufficient_memory"
    assert "held by: keeper" in detail["message"]
    assert state(client, "keeper") == "loaded"


def test_a_model_loaded_by_hand_is_never_evicted(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    models = {"manual": {**on_demand(weights), "load_on_demand": False}, "y": on_demand(weights)}
    client = make_app(settings(tmp_path, models, memory_wait_timeout_s=0.3)).test_client()
    assert ask(client, "manual").get_json()["detail"]["code"] == "model_not_loaded"  # as before
    assert client.post("/v1/admin/models/manual/load").status_code == 200
    client.post("/v1/admin/models/y/load")  # an admin load ignores the budget...
    assert client.post("/v1/admin/models/y/unload").status_code == 200
    r = ask(client, "y")  # ...a load on demand does not: 60 + 60 of 130 fits
    assert r.status_code == 200
    assert state(client, "manual") == "loaded"


def test_the_ledger_is_kept_in_the_state_dir(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    client = make_app(settings(tmp_path, {"x": on_demand(weights, scripted_memory_mib=77.0)})).test_client()
    assert ask(client, "x").status_code == 200
    ledger = Ledger(str(tmp_path / "state"))
    estimate = ledger.estimate("x", next(iter(ledger._rows["x"])), None)
    assert (estimate.mib, estimate.source, estimate.how) == (77.0, "measured", "runtime")
    assert not list(tmp_path.glob("*.json.tmp"))


# -- one line per model, loaded or not (issue 20) ------------------------------------------
def pool_of(app: Flask) -> Any:
    return app.extensions["llmpool"]


def test_jobs_waiting_for_a_load_share_the_models_one_line_and_its_bound(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    app = make_app(settings(tmp_path, {"x": on_demand(weights, max_queue=2, scripted_load_s=0.5)}))
    line = pool_of(app).models["x"].line
    calls = [in_thread(lambda: ask(app.test_client(), "x")) for _ in range(2)]
    wait_for(lambda: line.qsize() == 2)
    assert state(app.test_client(), "x") in ("unloaded", "loading")
    full = ask(app.test_client(), "x")  # the bound counts jobs waiting for the load too
    assert full.status_code == 429 and full.get_json()["detail"]["code"] == "queue_full"
    for thread, out in calls:
        thread.join(10)
        assert out[0].status_code == 200
    assert line.qsize() == 0


def test_the_last_client_leaving_a_load_on_demand_cancels_it_at_once(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not at the placer's next poll: a load shorter than the poll would finish first
    (tests/integration/test_placement.py saw it), and the model stay up for nobody."""
    monkeypatch.setattr("llmpool.placement.placer.BUSY_POLL_S", 60.0)
    app = make_app(settings(tmp_path, {"x": on_demand(weights, scripted_load_s=30)}))
    entry = pool_of(app).models["x"]
    response = app.test_client().post(
        "/v1/responses", json={"model": "x", "input": "hi", "stream": True}, buffered=False
    )
    chunks = response.response
    assert b"response.created" in next(iter(chunks))
    wait_for(lambda: entry.state.value == "loading")
    response.close()  # the client leaves: its job leaves the line
    assert entry.line.qsize() == 0
    wait_for(lambda: entry.state.value == "unloaded", timeout=5)


def test_a_job_arriving_as_the_pool_unloads_its_model_waits_for_the_next_load(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    app = make_app(settings(tmp_path, {"x": on_demand(weights)}))
    assert ask(app.test_client(), "x").status_code == 200
    entry = pool_of(app).models["x"]
    first_load = entry.executor
    assert first_load.close_if_idle()  # what the placer does before an idle unload or eviction
    thread, out = in_thread(lambda: ask(app.test_client(), "x"))
    wait_for(lambda: entry.line.qsize() == 1)  # in line: neither refused nor started
    entry.unload(force=False, keep_queued=True)  # the placer's own unload keeps the line
    thread.join(10)
    assert out[0].status_code == 200  # served by the next load, which the line asked for
    assert entry.executor is not None and entry.executor is not first_load


def test_an_admin_unload_fails_the_jobs_in_line_with_model_unloading(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str
) -> None:
    app = make_app(settings(tmp_path, {"x": on_demand(weights, scripted_tokens=400, scripted_delay_s=0.01)}))
    client = app.test_client()
    entry = pool_of(app).models["x"]
    running, _ = in_thread(lambda: ask(app.test_client(), "x"))
    wait_for(lambda: entry.executor is not None and entry.executor.inflight == 1)
    queued, out = in_thread(lambda: ask(app.test_client(), "x"))
    wait_for(lambda: entry.line.qsize() == 1)
    assert client.post("/v1/admin/models/x/unload?force=true").status_code == 200
    queued.join(10)
    running.join(10)
    assert out[0].status_code == 409 and out[0].get_json()["detail"]["code"] == "model_unloading"


def held_by_hand(tmp_path: Path, weights: str, big: str, x: dict[str, Any]) -> dict[str, Any]:
    """`p` (100 MiB, loaded by hand: never evicted) leaves no room for `x` (60 MiB)."""
    return settings(tmp_path, {"p": on_demand(big, scripted_memory_mib=100.0), "x": x})


@pytest.fixture
def x_waiting(
    make_app: Callable[..., Flask], tmp_path: Path, weights: str, big: str
) -> tuple[Flask, threading.Thread, list[Any]]:
    """A request for `x` waiting for memory that `p` holds: (app, its thread, its answer)."""
    app = make_app(held_by_hand(tmp_path, weights, big, on_demand(weights)))
    assert app.test_client().post("/v1/admin/models/p/load").status_code == 200
    thread, out = in_thread(lambda: ask(app.test_client(), "x"))
    wait_for(
        lambda: [w["model"] for w in app.test_client().get("/v1/admin/memory").get_json()["waiting"]] == ["x"]
    )
    return app, thread, out


def test_a_settings_reload_hands_the_waiting_jobs_to_the_new_definition(
    x_waiting: tuple[Flask, threading.Thread, list[Any]],
    write_settings: Callable[..., Path],
    tmp_path: Path,
    weights: str,
    big: str,
) -> None:
    app, thread, out = x_waiting
    client = app.test_client()
    old = pool_of(app).models["x"]
    write_settings(held_by_hand(tmp_path, weights, big, on_demand(weights, scripted_tokens=5)))
    r = client.post("/v1/admin/settings/reload")
    assert r.status_code == 200 and r.get_json()["updated"] == ["x"], r.get_json()
    assert pool_of(app).models["x"] is not old and pool_of(app).models["x"].line.qsize() == 1
    assert client.post("/v1/admin/models/p/unload").status_code == 200  # room for x now
    thread.join(10)
    assert out[0].status_code == 200, out[0].get_json()
    assert "t4" in out[0].get_data(as_text=True)  # the new definition's five tokens


def test_a_settings_reload_that_ends_the_load_on_demand_fails_the_waiting_jobs(
    x_waiting: tuple[Flask, threading.Thread, list[Any]],
    write_settings: Callable[..., Path],
    tmp_path: Path,
    weights: str,
    big: str,
) -> None:
    app, thread, out = x_waiting
    write_settings(held_by_hand(tmp_path, weights, big, {**on_demand(weights), "load_on_demand": False}))
    assert app.test_client().post("/v1/admin/settings/reload").status_code == 200
    thread.join(10)
    detail = out[0].get_json()["detail"]
    assert out[0].status_code == 409 and detail["code"] == "model_unloading"
    assert "removed this model's load on demand" in detail["message"]
    assert pool_of(app).models["x"].line.qsize() == 0
