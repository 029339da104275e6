"""How much memory a load took, measured the way each kind of runtime allows.

- a child process on the host: resident memory of its whole process group (vLLM's engine
  runs in grandchildren);
- a child on a GPU: NVML's per-process usage of those processes;
- an in-process runtime on the host: this process's resident memory after the load minus
  before (another load running at the same time blurs it: the ledger keeps the last
  figure, so the next load corrects it);
- an in-process runtime on a GPU: that device's used memory after minus before.
"""

from __future__ import annotations

import os

from llmpool import gpu
from llmpool.supervisor import living_group_members

_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / (1024 * 1024) if hasattr(os, "sysconf") else 4096 / (1024 * 1024)


def rss_mib(pid: int | str = "self") -> float | None:
    """Resident memory of one process (Linux /proc), None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE_MIB
    except (OSError, ValueError, IndexError):
        return None


def group_rss_mib(pids: list[int]) -> float | None:
    members = {m for pid in pids for m in [pid, *living_group_members(pid)]}
    sizes = [size for m in members if (size := rss_mib(m)) is not None]
    return sum(sizes) if sizes else None


class LoadProbe:
    """Taken just before a load; `measure` just after it."""

    def __init__(self, device: str | None) -> None:
        self.device = device
        self.before: float | None = None
        if device == "host":
            self.before = rss_mib()
        elif device is not None:
            self.before = gpu.device_used_mib(int(device))

    def measure(self, child_pids: list[int]) -> tuple[float, str] | None:
        """(MiB, how) or None when nothing could be measured (no NVML, no /proc)."""
        if self.device is None:
            return None
        if child_pids:
            if self.device == "host":
                mib = group_rss_mib(child_pids)
                return (mib, "child_rss") if mib is not None else None
            mib = gpu.process_used_mib(child_pids)
            return (mib, "nvml_process") if mib else None
        if self.before is None:
            return None
        if self.device == "host":
            after = rss_mib()
            how = "rss_delta"
        else:
            after = gpu.device_used_mib(int(self.device))
            how = "device_delta"
        return (max(0.0, after - self.before), how) if after is not None else None
