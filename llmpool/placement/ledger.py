"""The memory ledger: what each model needs, learned at each load, kept across restarts.

Keyed by model and by the load it describes: a short digest of the model's definition (a
changed file or option is a different model) plus the load plan (replicas, slots and
overrides: a second replica or a longer context needs more). Until a key is measured the
estimate is the artifact's size on disk times `ARTIFACT_FACTOR` per replica: weights
plus the KV cache and compute buffers a runtime allocates beside them (SmolLM2's 94 MB
GGUF measured 160 MB resident in llama.cpp with a 2048-token context: 1.7x).

The file is JSON under `service.state_dir` (never in the settings files), replaced
atomically on every change. A missing file is an empty ledger; an unreadable one is set
aside as `<name>.bad` and the pool starts learning again, saying so in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "memory-ledger.json"
ARTIFACT_FACTOR = 1.5
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Estimate:
    mib: float | None
    source: str  # "measured" | "artifact_size" | "unknown"
    how: str | None = None  # measured: "child_rss", "rss_delta", "nvml_process", "device_delta"
    at: float | None = None  # unix time of the measurement

    def row(self) -> dict[str, Any]:
        return {"estimate_mib": self.mib, "source": self.source, "how": self.how, "measured_at": self.at}


def load_key(definition: Any, plan: dict[str, Any]) -> str:
    """The ledger key of one load of one model definition."""
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:12]
    shape = {
        "replicas": plan.get("replicas", 1),
        "target_inflight": plan.get("target_inflight", 1),
        "overrides": plan.get("overrides") or {},
    }
    return f"{digest}:{json.dumps(shape, sort_keys=True)}"


class Ledger:
    """Thread-safe; every method answers from memory except `record`, which also writes
    the file (on the load or unload thread that measured, never on the hub)."""

    def __init__(self, state_dir: str | None) -> None:
        self.path = os.path.join(state_dir, FILE_NAME) if state_dir else None
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, dict[str, Any]]] = self._read()
        self._warned = False

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
                raise ValueError("not a ledger")
            return {
                str(model): {str(k): dict(v) for k, v in keys.items() if isinstance(v, dict)}
                for model, keys in data["models"].items()
                if isinstance(keys, dict)
            }
        except (OSError, ValueError) as exc:
            bad = self.path + ".bad"
            log.warning("memory ledger %s is unreadable (%s); set aside as %s", self.path, exc, bad)
            try:
                os.replace(self.path, bad)
            except OSError:
                pass
            return {}

    def estimate(self, model: str, key: str, artifact_bytes: int | None, replicas: int = 1) -> Estimate:
        with self._lock:
            row = self._rows.get(model, {}).get(key)
        if row is not None and isinstance(row.get("mib"), int | float):
            return Estimate(float(row["mib"]), "measured", row.get("how"), row.get("at"))
        if artifact_bytes:
            return Estimate(round(artifact_bytes / _MIB * ARTIFACT_FACTOR * replicas, 1), "artifact_size")
        return Estimate(None, "unknown")

    def record(self, model: str, key: str, mib: float, how: str) -> None:
        with self._lock:
            self._rows.setdefault(model, {})[key] = {
                "mib": round(mib, 1),
                "how": how,
                "at": round(time.time(), 3),
            }
            snapshot = json.dumps({"version": 1, "models": self._rows}, indent=1, sort_keys=True)
            self._write(snapshot)

    def _write(self, text: str) -> None:
        if self.path is None:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._warned:  # once: the pool keeps learning in memory
                log.warning("cannot write the memory ledger %s: %s", self.path, exc)
                self._warned = True
