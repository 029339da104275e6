"""GET /openapi.json (issue 12 point 4): every route documented, with its real schemas.

The document is also held to the running server by `tests/fuzz_api.py` (schemathesis),
which `make test` runs; here: completeness and the shape of what is documented.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from tests.fakes import scripted_model


def test_every_route_is_in_the_document(make_app: Callable[..., Flask]) -> None:
    app = make_app({"engine": {"models": {"m": scripted_model()}}})
    document = app.test_client().get("/openapi.json").get_json()
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"  # a path item's parameters (here `{name}`), not a method
    }
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<name>", "{name}")
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((path, method))
    assert routes == documented


def test_the_document_names_the_configured_models_and_the_rules(make_app: Callable[..., Flask]) -> None:
    app = make_app({"engine": {"models": {"m": scripted_model(), "n": scripted_model(enabled=False)}}})
    document = app.test_client().get("/openapi.json").get_json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["openapi"] == "3.1.0"
    request = document["components"]["schemas"]["ResponsesRequest"]
    assert request["properties"]["model"]["examples"] == ["m", "n"]
    assert request["additionalProperties"] is False  # unknown keys are a 422
    load = document["paths"]["/v1/admin/models/{name}/load"]["post"]
    assert {"200", "202", "401", "404", "422"} <= set(load["responses"])
    chat_error = document["paths"]["/v1/chat/completions"]["post"]["responses"]["401"]
    assert chat_error["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
