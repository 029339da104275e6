"""The worker protocol of vLLM's router (issue 22): GET /get_load is the sum of the
`llmpool:num_requests_*` gauges (waiting for a slot, waiting for a load, running), and
GET /health follows readiness. (The router itself, against real pools, is
tests/integration/test_router.py; who may call these routes, tests/http/test_auth.py.)"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from blueprints import create_app
from llmpool.config.loader import load_settings
from llmpool.pool import Pool
from tests.fakes import scripted_model
from tests.http.test_observability import scrape, value


def wait_for(client: FlaskClient, **expected: int) -> dict[str, Any]:
    load: dict[str, Any] = {}
    for _ in range(500):
        load = client.get("/get_load").get_json()
        if all(load[k] == v for k, v in expected.items()):
            return load
        threading.Event().wait(0.01)
    raise AssertionError(f"get_load never reached {expected}: {load}")


def test_the_load_is_what_the_request_gauges_count(make_app: Callable[..., Flask]) -> None:
    models = {
        "slow": scripted_model(scripted_tokens=300, scripted_delay_s=0.01),
        # Loaded on demand, slowly: a request for it waits for the load.
        "lazy": scripted_model(enabled=False, load_on_demand=True, scripted_load_s=3.0, scripted_delay_s=0.0),
    }
    client = make_app({"engine": {"models": models}}).test_client()
    assert client.get("/get_load").get_json() == {"load": 0, "waiting": 0, "running": 0}
    threads = [
        threading.Thread(
            target=client.post, args=("/v1/responses",), kwargs={"json": {"model": m, "input": "hi"}}
        )
        for m in ("slow", "slow", "lazy")
    ]
    threads[0].start()
    wait_for(client, running=1)
    threads[1].start()
    wait_for(client, waiting=1)
    threads[2].start()
    load = wait_for(client, waiting=2)
    assert load == {"load": 3, "waiting": 2, "running": 1}
    m = scrape(client)
    assert value(m, "llmpool:num_requests_waiting") == 2 and value(m, "llmpool:num_requests_running") == 1
    assert value(m, "llmpool_waiting_for_load", model="lazy") == 1
    assert value(m, "llmpool_queue_depth", model="slow") == 1
    for thread in threads:
        thread.join(30)
    assert client.get("/get_load").get_json()["load"] == 0


def test_health_follows_readiness(
    make_app: Callable[..., Flask], write_settings: Callable[..., Path]
) -> None:
    client = make_app({"engine": {"models": {"m": scripted_model()}}}).test_client()
    r = client.get("/health")
    assert r.status_code == 200 and r.get_json() == client.get("/readyz").get_json()
    write_settings({"engine": {"models": {"m": scripted_model()}}})
    pool = Pool(load_settings())  # not started: its start-up loads have not run
    try:
        r = create_app(pool.settings, pool=pool, start_models=False).test_client().get("/health")
        assert r.status_code == 503 and r.get_json()["ready"] is False
    finally:
        pool.shutdown()
