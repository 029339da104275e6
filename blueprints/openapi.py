"""GET /openapi.json: the OpenAPI 3.1 document flask-smorest builds from each route's
declarations (`blueprints.contract`): the schemas that parse its arguments and describe its
answers, and the error bodies the renderer writes for its path. Nothing here restates
them; `make test` holds the running server to the document (schemathesis), and
tests/http/test_openapi.py checks every route and query parameter against it.

Model names are free strings (an unknown one is a 404), with the configured names as
examples so a generated request can reach a real model.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Response, current_app, jsonify

from blueprints.context import pool
from blueprints.contract import Api, Blueprint

bp = Blueprint("openapi", __name__)


def api() -> Api:
    return current_app.extensions["llmpool.api"]


def build_document(model_names: list[str]) -> dict[str, Any]:
    document = copy.deepcopy(api().spec.to_dict())
    _add_model_examples(document, model_names)
    return document


def _add_model_examples(document: dict[str, Any], names: list[str]) -> None:
    """The configured names as examples of every body's `model` and every `{name}`."""
    if not names:
        return
    schemas = document["components"]["schemas"]
    for item in document["paths"].values():
        parameters = list(item.get("parameters", []))
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            parameters += operation.get("parameters", [])
            for content in operation.get("requestBody", {}).get("content", {}).values():
                ref = content["schema"].get("$ref", "")
                model = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}).get("model")
                if model is not None:
                    model["examples"] = names
        for parameter in parameters:
            if parameter.get("in") == "path" and parameter.get("name") == "name":
                parameter["schema"] = {**parameter["schema"], "examples": names}


@bp.get("/openapi.json", errors=(401,))
@bp.response(200, {"type": "object"}, description="OpenAPI 3.1")
def openapi_document() -> Response:
    """This document"""
    return jsonify(build_document(list(pool().models)))
