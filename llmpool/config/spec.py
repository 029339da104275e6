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
        "load_on_demand",
        "idle_unload_s",
        "pinned",
        "memory_device",
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
    # Models that come and go (llmpool.placement): None load_on_demand means the service
    # default was not applied yet (the loader always applies it).
    load_on_demand: bool = False
    idle_unload_s: float | None = None
    pinned: bool = False
    memory_device: str | None = None  # "host", a GPU index, or None: counted nowhere
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
    # Placement (llmpool.placement): per-device budgets ("host" or a GPU index -> MiB), where
    # the memory ledger lives, and the policy's clocks.
    memory_budget_mib: Mapping[str, float] = field(default_factory=dict)
    state_dir: str | None = None
    load_on_demand: bool = False
    min_resident_s: float = 0.0
    swap_max_wait_s: float = 30.0
    memory_wait_timeout_s: float = 300.0


@dataclass(frozen=True)
class Settings:
    service: ServiceSettings
    media: MediaPolicy
    decoding: Decoding
    models: Mapping[str, ModelSpec]  # in configuration order
    sources: tuple[str, ...] = ()  # the files that were read, base first
