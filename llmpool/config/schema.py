"""Schemas of the settings files. Unknown keys are errors everywhere (marshmallow RAISE).

Model definitions are validated one at a time (see loader): the common keys below plus
the keys the model's backend adapter declares, so each backend owns its own keys.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from llmpool import prompts
from llmpool.config.fields import StrictBool, StrictFloat, StrictInt
from llmpool.secrets import ENV_NAME

MODALITIES = ("text", "image")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


_ENV_NAME_RULE = validate.Regexp(ENV_NAME, error="Must be an environment variable name.")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ServiceSchema(_Strict):
    host = fields.String(load_default="127.0.0.1")
    port = StrictInt(load_default=8010, validate=validate.Range(1, 65535))
    log_level = fields.String(load_default="info", validate=validate.OneOf(LOG_LEVELS))
    # Names of environment variables holding the secrets (llmpool.auth), never the secrets;
    # held to the shape of a name so that a secret pasted here is refused, not echoed.
    admin_token_env = fields.String(load_default=None, allow_none=True, validate=_ENV_NAME_RULE)
    api_keys_env = fields.String(load_default=None, allow_none=True, validate=_ENV_NAME_RULE)
    max_body_mb = StrictFloat(load_default=32, validate=validate.Range(min=0, min_inclusive=False))
    log_prompts = StrictBool(load_default=False)
    # llmpool.placement: budgets per device, the ledger's directory, the policy's clocks.
    memory_budget_mib = fields.Dict(
        keys=fields.String(
            validate=validate.Regexp(r"^(host|[0-9]{1,2})$", error="Must be 'host' or a GPU index.")
        ),
        values=StrictFloat(validate=validate.Range(min=0, min_inclusive=False)),
        load_default=dict,
    )
    state_dir = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    load_on_demand = StrictBool(load_default=False)
    min_resident_s = StrictFloat(load_default=0.0, validate=validate.Range(min=0))
    swap_max_wait_s = StrictFloat(load_default=30.0, validate=validate.Range(min=0))
    memory_wait_timeout_s = StrictFloat(load_default=300.0, validate=validate.Range(min=0))


def decoding_fields() -> dict[str, fields.Field]:
    """The decoding keys and their ranges; shared by settings and the request schema."""
    return {
        "beam_size": StrictInt(validate=validate.Range(1, 16)),
        "top_k": StrictInt(validate=validate.Range(0, 1000)),
        "top_p": StrictFloat(validate=validate.Range(0, 1, min_inclusive=False)),
        "temperature": StrictFloat(validate=validate.Range(0, 2)),
        "repetition_penalty": StrictFloat(validate=validate.Range(0, 4, min_inclusive=False)),
        "max_tokens": StrictInt(validate=validate.Range(min=1)),
        "stop": fields.List(fields.String(), validate=validate.Length(max=16)),
        # llama.cpp's seed is 32 bits; every runtime that takes a seed takes these.
        "seed": StrictInt(allow_none=True, validate=validate.Range(0, 2**32 - 1)),
    }


DecodingSchema = Schema.from_dict(decoding_fields(), name="DecodingSchema")
DecodingSchema.Meta.unknown = RAISE


class EngineSchema(_Strict):
    backend = fields.String(load_default="llama_cpp")
    decoding = fields.Nested(DecodingSchema, load_default=dict)
    # Each value is validated by the model schema of its backend (see loader).
    models = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)


class MediaSchema(_Strict):
    max_image_bytes = StrictInt(load_default=16 * 1024 * 1024, validate=validate.Range(min=1))
    # Absolute, or relative to the settings file (the loader resolves them).
    allowed_dirs = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    allow_http = StrictBool(load_default=False)
    allow_private_http = StrictBool(load_default=False)
    http_timeout_s = StrictFloat(load_default=10.0, validate=validate.Range(min=0, min_inclusive=False))
    max_redirects = StrictInt(load_default=3, validate=validate.Range(min=0, max=10))
    # Fetches run one after another: this bounds a request's time and memory for images.
    max_images_per_request = StrictInt(load_default=16, validate=validate.Range(min=1))


class SettingsSchema(_Strict):
    # marshmallow does not deserialize load_default, so an absent section is loaded from {}
    # to get its own defaults.
    service = fields.Nested(ServiceSchema, load_default=lambda: ServiceSchema().load({}))
    engine = fields.Nested(EngineSchema, load_default=lambda: EngineSchema().load({}))
    media = fields.Nested(MediaSchema, load_default=lambda: MediaSchema().load({}))


def common_model_fields(default_backend: str) -> dict[str, fields.Field]:
    return {
        "backend": fields.String(load_default=default_backend),
        "model_path": fields.String(load_default=None, allow_none=True),
        "prompt_format": fields.String(load_default="generic", validate=validate.OneOf(prompts.names())),
        "enable_thinking": StrictBool(load_default=False),
        "enabled": StrictBool(load_default=False),
        "replicas": StrictInt(load_default=1, validate=validate.Range(min=1)),
        "replica_max": StrictInt(load_default=None, validate=validate.Range(min=1)),
        "target_inflight": StrictInt(load_default=1, validate=validate.Range(min=1)),
        "modalities": fields.List(
            fields.String(validate=validate.OneOf(MODALITIES)), load_default=lambda: ["text"]
        ),
        "max_queue": StrictInt(load_default=64, validate=validate.Range(min=1)),
        "unload_timeout_s": StrictFloat(load_default=30.0, validate=validate.Range(min=0)),
        # None: the service's load_on_demand (the loader fills it in).
        "load_on_demand": StrictBool(load_default=None, allow_none=True),
        "idle_unload_s": StrictFloat(load_default=None, allow_none=True, validate=validate.Range(min=0)),
        "pinned": StrictBool(load_default=False),
        # None: the backend's own answer (Adapter.memory_device).
        "memory_device": fields.String(
            load_default=None,
            allow_none=True,
            validate=validate.Regexp(r"^(host|[0-9]{1,2})$", error="Must be 'host' or a GPU index."),
        ),
    }


class _ModelRules(_Strict):
    @validates_schema
    def _cross_field(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("replica_max") is None:
            data["replica_max"] = data["replicas"]
        if data["replicas"] > data["replica_max"]:
            raise ValidationError(
                f"replicas ({data['replicas']}) exceeds replica_max ({data['replica_max']})",
                "replicas",
            )
        modalities = data["modalities"]
        if "text" not in modalities or len(set(modalities)) != len(modalities):
            raise ValidationError("must contain 'text' once, optionally 'image' once", "modalities")


def model_schema(default_backend: str, backend_fields: dict[str, fields.Field]) -> Schema:
    """A schema for one model of a given backend: common keys + that backend's keys."""
    all_fields = {**common_model_fields(default_backend), **backend_fields}
    return _ModelRules.from_dict(all_fields, name="ModelSchema")()
