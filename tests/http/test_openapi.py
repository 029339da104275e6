"""GET /openapi.json (issue 12 point 4): every route documented, with its real schemas.

The document is also held to the running server by `tests/fuzz_api.py` (schemathesis),
which `make test` runs; here: completeness, the shape of what is documented, and every
query parameter: the names each view reads are those documented, and each value tried is
accepted exactly when the document allows it (issue 20: `force=yes` was accepted but not
documented, `since` was not documented at all, `tail=999999` was documented but refused).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from flask import Flask
from werkzeug.datastructures import ImmutableMultiDict

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


# -- query parameters: what each view reads and accepts, against the document -----------
# Values tried on every documented query parameter, besides those its schema names
# (enum values, examples and their other cases, the bounds and one past each).
PROBES = [
    "",
    "x",
    "0",
    "1",
    "5",
    "-1",
    "1.5",
    "1e3",
    "0x10",
    "²",
    "٣",
    "true",
    "false",
    "maybe",
    "ture",
    "nein",
]


class RecordingArgs(ImmutableMultiDict[str, str]):
    """Query arguments that note every name a view (or its parser) looks up."""

    read: ClassVar[set[str]] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def getlist(self, key: str, type: Any = None) -> list[Any]:  # noqa: A002 (werkzeug's name)
        self.read.add(key)
        return super().getlist(key, type)


def operations(app: Flask) -> list[tuple[str, str, str]]:
    """(method, URL with a configured model for `<name>`, documented path) of every route."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule.replace("<name>", "m"), rule.rule.replace("<name>", "{name}")))
    return out


def query_refused(r: Any, name: str) -> bool:
    """A 422 that names the query parameter (either error shape)."""
    body = r.get_json(silent=True) or {}
    detail = body.get("detail")
    if r.status_code != 422:
        return False
    if isinstance(detail, list):
        return any(d["loc"][:2] == ["query", name] for d in detail)
    return bool(body.get("error", {}).get("param") == name)


def documented_valid(schema: dict[str, Any], value: str) -> bool:
    """Whether the document allows `value` (as sent in a query string) for `schema`."""
    if "enum" in schema and value not in [str(v) for v in schema["enum"]]:
        return False
    if schema.get("type") == "integer":
        if not re.fullmatch(r"-?(0|[1-9][0-9]*)", value):
            return False
        number = int(value)
        return schema.get("minimum", number) <= number <= schema.get("maximum", number)
    return "pattern" not in schema or re.search(schema["pattern"], value) is not None


def probes(schema: dict[str, Any]) -> set[str]:
    named = [str(v) for v in [*schema.get("enum", []), *schema.get("examples", [])]]
    out = {*PROBES, *named, *(v.upper() for v in named), *(v.title() for v in named)}
    for bound, step in (("minimum", -1), ("maximum", 1)):
        if bound in schema:
            out |= {str(schema[bound]), str(schema[bound] + step)}
    return out


def test_each_query_parameter_a_view_reads_is_documented_with_the_values_it_accepts(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app({"engine": {"models": {"m": scripted_model()}}})
    monkeypatch.setattr(Flask.request_class, "parameter_storage_class", RecordingArgs)
    client = app.test_client()
    document = client.get("/openapi.json").get_json()
    checked = 0
    for method, url, path in operations(app):
        operation = document["paths"][path][method.lower()]
        params = [p for p in operation.get("parameters", []) if p["in"] == "query"]
        documented = {p["name"]: p["schema"] for p in params}
        RecordingArgs.read.clear()
        client.open(url, method=method)
        assert RecordingArgs.read == set(documented), (method, path)
        r = client.open(f"{url}?undocumented=1", method=method)  # ignored everywhere
        assert not query_refused(r, "undocumented"), (method, path, r.get_json())
        for name, schema in documented.items():
            for value in sorted(probes(schema)):
                r = client.open(url, method=method, query_string={name: value})
                accepted = not query_refused(r, name)
                assert accepted == documented_valid(schema, value), (method, path, name, value, r.get_json())
                checked += 1
    assert checked > 50  # the admin routes' wait, force, since and tail were all tried


# -- request bodies: what the document allows of the fields the pool refuses -------------
BODIES = {
    "/v1/responses": {"model": "m", "input": "x"},
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
    "/v1/completions": {"model": "m", "prompt": "x"},
}


def named(r: Any, field: str) -> bool:
    """A 4xx naming `field` (every inference route carries OpenAI's `error.param`)."""
    return 400 <= r.status_code < 500 and (r.get_json() or {}).get("error", {}).get("param") == field


def unlisted(schema: dict[str, Any]) -> Any:
    """A value of the field's own type that the document does not allow."""
    if "maxItems" in schema:
        return [{"type": "function"} if schema.get("items", {}).get("type") != "string" else "x"]
    if "maxProperties" in schema:
        return {"a": 1}
    enum = [v for v in schema["enum"] if v is not None]
    types = schema.get("type", [])
    if "boolean" in types:
        return not enum[0]
    if "integer" in types:
        return max(enum, default=0) + 1
    return {"type": "json_object"} if any(isinstance(v, dict) for v in enum) else "unlisted"


@pytest.mark.parametrize("path", sorted(BODIES))
def test_the_values_a_body_may_take_are_those_documented(make_app: Callable[..., Flask], path: str) -> None:
    """Every field documented with a closed set of values (an enum, or an array or object
    that must be empty: what the pool honours of what a client may ask) takes each listed
    value, and refuses, naming the field, one it does not list."""
    app = make_app({"engine": {"models": {"m": scripted_model(scripted_tokens=2, scripted_delay_s=0.0)}}})
    client = app.test_client()
    document = client.get("/openapi.json").get_json()
    ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    properties = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
    closed = {k: s for k, s in properties.items() if {"enum", "maxItems", "maxProperties"} & set(s)}
    assert len(closed) >= 3, closed  # n, tools, logprobs, store, ...: the refusals are documented
    for field, schema in closed.items():
        for value in [v for v in schema.get("enum", []) if v is not None]:
            r = client.post(path, json={**BODIES[path], field: value})
            assert not named(r, field), (field, value, r.get_json())
        r = client.post(path, json={**BODIES[path], field: unlisted(schema)})
        assert named(r, field), (field, unlisted(schema), r.status_code, r.get_json())
