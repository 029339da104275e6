"""A model's definition with its current load plan applied (the active spec and the
capabilities admission reads), and what its loads take in memory: the ledger's estimate
before a load, the record after one, the GPU memory NVML saw it take. A part of
`ModelEntry` (which mixes it in), kept apart because none of it touches the model's
state machine or its line."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from llmpool import gpu
from llmpool.backends.base import Adapter, Capabilities
from llmpool.config.spec import ModelSpec
from llmpool.placement.ledger import Estimate, Ledger, load_key
from llmpool.placement.measure import LoadProbe


class PlannedModel:
    # Set by ModelEntry.__init__.
    spec: ModelSpec
    adapter_cls: type[Adapter]
    ledger: Ledger | None
    _measured_mib: dict[str, float]  # last measured VRAM per override (json key), across unloads
    _artifact_bytes: dict[str, int | None]  # weights on disk, per ledger key

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def load_override(self) -> dict[str, Any] | None:
        return self._load_override

    @load_override.setter
    def load_override(self, plan: dict[str, Any] | None) -> None:
        # Admission reads the active spec and capabilities on every request: derive them
        # here, when the plan changes (load and unload), not per request.
        self._load_override = plan
        applied = plan or {}
        self._active_spec = dataclasses.replace(
            self.spec.with_overrides(applied.get("overrides") or {}),
            replicas=applied.get("replicas", self.spec.replicas),
            target_inflight=applied.get("target_inflight", self.spec.target_inflight),
        )
        self._capabilities = self.adapter_cls.capabilities(self._active_spec)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def active_spec(self) -> ModelSpec:
        """The definition as loaded: the load plan's replicas, slots and overrides applied."""
        return self._active_spec

    def effective_inflight(self, configured: int) -> int:
        return configured if self.adapter_cls.can_batch else 1

    def load_key(self, plan: dict[str, Any] | None = None) -> str:
        if plan is None:
            plan = self.load_override or {
                "replicas": self.spec.replicas,
                "target_inflight": self.spec.target_inflight,
            }
        return load_key(dict(self.spec.definition), plan)

    def memory_estimate(self, plan: dict[str, Any] | None = None) -> Estimate:
        """What a load (`plan`; default: the current one, else the configured one) needs
        on the model's device, from the ledger."""
        if self.ledger is None or self.spec.memory_device is None:
            return Estimate(None, "unknown")
        replicas = (plan or self.load_override or {}).get("replicas", self.spec.replicas)
        key = self.load_key(plan)
        if key not in self._artifact_bytes:  # asked on every placement pass and admin row
            spec = self.active_spec if plan is None else self.spec
            self._artifact_bytes[key] = self.adapter_cls.artifact_size_bytes(spec)
        return self.ledger.estimate(self.name, key, self._artifact_bytes[key], replicas)

    def _record_memory(self, before: float | None, probe: LoadProbe, runtimes: list[Adapter]) -> None:
        """After a load: what it took on the GPU (NVML, `before` it began), and the
        ledger's record, from the runtimes themselves or else from the probe."""
        after = gpu.used_mib()
        if before is not None and after is not None:
            self._measured_mib[self._override_key()] = round(max(0.0, after - before), 1)
        if self.ledger is None:
            return
        own = [r.footprint_mib() for r in runtimes]
        if own and all(mib is not None for mib in own):
            self.ledger.record(self.name, self.load_key(), sum(mib or 0.0 for mib in own), "runtime")
            return
        pids = [pid for r in runtimes if (pid := r.pid()) is not None]
        measured = probe.measure(pids)
        if measured is not None:
            self.ledger.record(self.name, self.load_key(), *measured)

    def _override_key(self) -> str:
        return json.dumps((self.load_override or {}).get("overrides") or {}, sort_keys=True)

    def measured_mib(self) -> float | None:
        """GPU memory the last load with the current overrides took (NVML), if measured."""
        return self._measured_mib.get(self._override_key())
