"""POST /v1/admin/settings/reload (SPEC §2, issue 12 point 3): atomic, idle models only."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fakes import scripted_model

RELOAD = "/v1/admin/settings/reload"


def base() -> dict[str, Any]:
    return {
        "engine": {
            "decoding": {"max_tokens": 24},
            "models": {
                "busy": scripted_model(scripted_tokens=4, scripted_delay_s=0.0),
                "idle": scripted_model(enabled=False, scripted_tokens=4, scripted_delay_s=0.0),
                "gone": scripted_model(enabled=False),
                "same": scripted_model(enabled=False),
            },
        }
    }


@pytest.fixture
def setup(
    make_app: Callable[..., Flask], write_settings: Callable[..., Path]
) -> tuple[FlaskClient, Callable[..., Path]]:
    return make_app(base()).test_client(), write_settings


def names(client: FlaskClient) -> list[str]:
    return [row["name"] for row in client.get("/v1/admin/models").get_json()["models"]]


def generate(client: FlaskClient, model: str) -> Any:
    return client.post("/v1/responses", json={"model": model, "input": "hi"})


def test_adds_removes_and_updates_idle_models(setup: tuple[FlaskClient, Callable[..., Path]]) -> None:
    client, write = setup
    new = base()
    models = new["engine"]["models"]
    del models["gone"]
    models["idle"]["scripted_tokens"] = 7
    models["fresh"] = scripted_model(enabled=False)
    write(new)
    r = client.post(RELOAD)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {
        "added": ["fresh"],
        "removed": ["gone"],
        "updated": ["idle"],
        "unchanged": ["busy", "same"],
        "conflicts": [],
        "settings_changed": [],
    }
    assert names(client) == ["busy", "idle", "same", "fresh"]
    assert generate(client, "gone").status_code == 404
    # The updated definition is the one a load uses.
    assert client.post("/v1/admin/models/idle/load").status_code == 200
    assert generate(client, "idle").get_json()["usage"]["output_tokens"] == 7
    # The loaded model kept serving throughout, from the same runtime.
    assert generate(client, "busy").status_code == 200
    # Nothing changed: all unchanged.
    again = client.post(RELOAD).get_json()
    assert again["unchanged"] == ["busy", "idle", "same", "fresh"] and not again["updated"]


def test_a_change_to_a_loaded_model_is_a_conflict_and_nothing_applies(
    setup: tuple[FlaskClient, Callable[..., Path]],
) -> None:
    client, write = setup
    before = _rows(client)
    new = base()
    new["engine"]["models"]["busy"]["scripted_tokens"] = 9  # loaded
    new["engine"]["models"]["fresh"] = scripted_model(enabled=False)
    new["engine"]["decoding"]["max_tokens"] = 3
    del new["engine"]["models"]["gone"]
    write(new)
    r = client.post(RELOAD)
    assert r.status_code == 409
    detail = r.get_json()["detail"]
    assert detail["code"] == "settings_conflict"
    assert detail["conflicts"] == [
        {
            "model": "busy",
            "state": "loaded",
            "reason": "model is loaded; unload it before changing its definition",
        }
    ]
    assert _rows(client) == before
    assert generate(client, "busy").get_json()["usage"]["output_tokens"] == 4
    # Unloaded first, the same files apply.
    assert client.post("/v1/admin/models/busy/unload").status_code == 200
    r = client.post(RELOAD)
    assert r.status_code == 200 and r.get_json()["updated"] == ["busy"]
    assert r.get_json()["settings_changed"] == ["engine.decoding"]


def test_removing_a_loaded_model_is_a_conflict(setup: tuple[FlaskClient, Callable[..., Path]]) -> None:
    client, write = setup
    new = base()
    del new["engine"]["models"]["busy"]
    write(new)
    r = client.post(RELOAD)
    assert r.status_code == 409 and r.get_json()["detail"]["conflicts"][0]["model"] == "busy"
    assert "busy" in names(client)


def test_service_settings_need_a_restart(setup: tuple[FlaskClient, Callable[..., Path]]) -> None:
    client, write = setup
    new = base()
    new["service"] = {"admin_token_env": "SOME_TOKEN"}
    write(new)
    r = client.post(RELOAD)
    assert r.status_code == 409
    assert r.get_json()["detail"]["conflicts"] == [
        {
            "key": "service.admin_token_env",
            "reason": "service settings apply at start-up only: restart the pool",
        }
    ]
    assert client.get("/v1/admin/models").status_code == 200  # still open: nothing applied


def test_decoding_defaults_apply_to_later_requests(setup: tuple[FlaskClient, Callable[..., Path]]) -> None:
    client, write = setup
    new = base()
    new["engine"]["models"]["busy"]["scripted_tokens"] = 4
    new["engine"]["decoding"]["max_tokens"] = 2
    write(new)
    assert client.post(RELOAD).get_json()["settings_changed"] == ["engine.decoding"]
    assert generate(client, "busy").get_json()["usage"]["output_tokens"] == 2


def test_invalid_files_are_refused_and_nothing_applies(
    setup: tuple[FlaskClient, Callable[..., Path]],
) -> None:
    client, write = setup
    new = copy.deepcopy(base())
    new["engine"]["models"]["idle"]["replicas"] = "2"
    new["engine"]["models"]["fresh"] = scripted_model(enabled=False)
    path = write(new)
    r = client.post(RELOAD)
    assert r.status_code == 400
    detail = r.get_json()["detail"]
    assert detail["code"] == "invalid_settings" and "engine.models.idle.replicas" in detail["message"]
    assert "fresh" not in names(client)
    path.write_text("{not json")
    assert client.post(RELOAD).status_code == 400


def test_reload_needs_the_admin_token(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELOAD_ADMIN", "tok-abcdef")
    settings = base()
    settings["service"] = {"admin_token_env": "RELOAD_ADMIN"}
    client = make_app(settings).test_client()
    assert client.post(RELOAD).status_code == 401
    r = client.post(RELOAD, headers={"Authorization": "Bearer tok-abcdef"})
    assert r.status_code == 200, r.get_json()


def test_a_replaced_definition_can_never_start_a_runtime(
    setup: tuple[FlaskClient, Callable[..., Path]],
) -> None:
    client, write = setup
    pool = client.application.extensions["llmpool"]
    old_entry = pool.models["idle"]
    new = base()
    new["engine"]["models"]["idle"]["scripted_tokens"] = 5
    write(new)
    assert client.post(RELOAD).status_code == 200
    assert pool.models["idle"] is not old_entry and old_entry.retired
    from llmpool.errors import InvalidLoadRequest

    with pytest.raises(InvalidLoadRequest):
        old_entry.begin_load({"replicas": 1, "target_inflight": 1, "overrides": {}})


def test_the_media_policy_applies_to_later_requests(setup: tuple[FlaskClient, Callable[..., Path]]) -> None:
    client, write = setup
    pool = client.application.extensions["llmpool"]
    assert pool.media.allow_http is False
    new = base()
    new["media"] = {"allow_http": True, "max_image_bytes": 1024}
    write(new)
    r = client.post(RELOAD)
    assert r.status_code == 200 and r.get_json()["settings_changed"] == ["media"]
    assert pool.media.allow_http is True and pool.media.max_image_bytes == 1024


def _rows(client: Any) -> list[dict[str, Any]]:
    """The admin rows without the one field that moves by itself (seconds idle)."""
    rows = client.get("/v1/admin/models").get_json()["models"]
    return [{k: v for k, v in row.items() if k != "idle_s"} for row in rows]
