"""GPU memory through NVML (pynvml, shipped by nvidia-ml-py).

Every function degrades to "no GPU" with an error string instead of raising: a CPU-only
host is a normal configuration, not a failure.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

_MIB = 1024 * 1024
_init_lock = threading.Lock()
_initialised = False


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    used_mib: float
    total_mib: float

    def row(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "used_mib": self.used_mib,
            "total_mib": self.total_mib,
        }


def _nvml() -> Any:
    """The initialised pynvml module; raises with a readable reason when unusable."""
    global _initialised
    import pynvml  # nvidia-ml-py; importing it needs no driver

    with _init_lock:
        if not _initialised:
            pynvml.nvmlInit()
            _initialised = True
    return pynvml


def snapshot() -> tuple[list[GpuInfo], str | None]:
    """All GPUs with their memory use, or ([], why not)."""
    try:
        nvml = _nvml()
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    used_mib=round(mem.used / _MIB, 1),
                    total_mib=round(mem.total / _MIB, 1),
                )
            )
        return gpus, None
    except Exception as exc:  # NVMLError subclasses, missing library, no driver
        return [], f"NVML unavailable: {exc}"


_present: bool | None = None


def present() -> bool:
    """Whether NVML sees at least one GPU (asked once: placement reads it per model)."""
    global _present
    if _present is None:
        gpus, _ = snapshot()
        _present = bool(gpus)
    return _present


def device_used_mib(index: int) -> float | None:
    """Memory used on one GPU, None without NVML or that GPU."""
    gpus, _ = snapshot()
    return next((g.used_mib for g in gpus if g.index == index), None)


def used_mib() -> float | None:
    """Memory used over all GPUs, None without NVML (used for load deltas)."""
    gpus, error = snapshot()
    if error is not None or not gpus:
        return None
    return sum(g.used_mib for g in gpus)


def process_used_mib(pids: list[int]) -> float | None:
    """NVML's per-process usage summed over `pids` on every GPU; None if unknown."""
    try:
        nvml = _nvml()
        total = 0
        wanted = set(pids)
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid in wanted and proc.usedGpuMemory:
                    total += proc.usedGpuMemory
        return round(total / _MIB, 1)
    except Exception:
        return None
