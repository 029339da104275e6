"""Validated, immutable settings as the rest of the pool sees them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmpool.generation import Decoding
from llmpool.media.policy import MediaPolicy

COMMON_KEYS = frozenset(
    {
        "backend",
        "model_path",
        "prompt_format",
        "enable_thinking",
        "enabled",
        "replicas",
        "replica_max",
        "target_inflight",
        "modalities",
        "max_queue",
        "unload_timeout_s",
    }
)


@dataclass(frozen=True)
class ModelSpec:
    """One model definition: the common keys as attributes, backend keys in `options`.

    `model_path` is already resolved to an absolute path (or None). `definition` is the
    validated definition as configured, for display (secrets are redacted by the caller).
    """

    name: str
    backend: str
    model_path: str | None
    prompt_format: str
    enable_thinking: bool
    enabled: bool
    replicas: int
    replica_max: int
    target_inflight: int
    modalities: tuple[str, ...]
    max_queue: int
    unload_timeout_s: float
    options: Mapping[str, Any] = field(default_factory=dict)
    definition: Mapping[str, Any] = field(default_factory=dict)

    def with_overrides(self, overrides: Mapping[str, Any]) -> ModelSpec:
        """A copy whose backend options carry a load's temporary overrides."""
        return dataclasses.replace(self, options={**self.options, **overrides})


@dataclass(frozen=True)
class ServiceSettings:
    """The `service` section (defaults and rules: `ServiceSchema`). Read once at start-up:
    a reload that changes it is refused (llmpool.reload)."""

    host: str
    port: int
    log_level: str
    admin_token_env: str | None
    api_keys_env: str | None
    max_body_mb: float
    log_prompts: bool


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings
    media: MediaPolicy
    decoding: Decoding
    models: Mapping[str, ModelSpec]  # in configuration order
    sources: tuple[str, ...] = ()  # the files that were read, base first
