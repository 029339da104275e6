"""Text for people: tables and one-line summaries of the admin API's answers.

Pure functions from decoded JSON to strings (no I/O), so the formatting is tested
without a pool. Missing or null fields show as "-": a newer or older pool may add or
lack a column, and the table must still print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

NONE = "-"
ERROR_WIDTH = 60
RELOAD_KEYS = ("added", "removed", "updated", "unchanged", "conflicts", "settings_changed")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; no trailing spaces."""
    grid = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in grid) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in grid]
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    """The first line, cut to `width`; "..." says that something was left out."""
    lines = text.strip().splitlines() or [""]
    if len(lines) == 1 and len(lines[0]) <= width:
        return lines[0]
    return lines[0][: width - 3].rstrip() + "..."


def plain(value: Any) -> str:
    """Text as itself, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def overrides_text(row: Mapping[str, Any]) -> str:
    """The active load override as `key=value` pairs (replicas and slots shown elsewhere)."""
    overrides = (row.get("load_override") or {}).get("overrides") or {}
    return " ".join(f"{k}={plain(v)}" for k, v in overrides.items()) or NONE


def vram_text(row: Mapping[str, Any]) -> str:
    vram = row.get("vram") or {}
    mib = vram.get("estimate_mib")
    if mib is None:
        return NONE
    source = vram.get("source")
    return f"{mib:.0f} MiB" + (" (size)" if source == "artifact_size" else "")


def _cell(value: Any) -> str:
    return NONE if value is None else str(value)


def status_table(models: Sequence[Mapping[str, Any]]) -> str:
    headers = ("NAME", "BACKEND", "STATE", "REPLICAS", "INFLIGHT", "QUEUE", "VRAM", "OVERRIDES", "LAST ERROR")
    rows = []
    for m in models:
        error = m.get("last_error")
        rows.append(
            (
                _cell(m.get("name")),
                _cell(m.get("backend")),
                _cell(m.get("state")),
                f"{_cell(m.get('replicas'))}/{_cell(m.get('replica_max'))}",
                _cell(m.get("inflight")),
                _cell(m.get("queue_depth")),
                vram_text(m),
                overrides_text(m),
                _shorten(error, ERROR_WIDTH) if error else NONE,
            )
        )
    return table(headers, rows)


def load_summary(row: Mapping[str, Any], waited: bool) -> str:
    name, state = row.get("name"), row.get("state")
    if not waited:
        return f"{name}: {state} (not waiting; `llm-pool status` shows when it is loaded)"
    parts = [f"{row.get('replicas')}/{row.get('replica_max')} replicas"]
    if (overrides := overrides_text(row)) != NONE:
        parts.append(f"overrides {overrides}")
    if row.get("load_seconds") is not None:
        parts.append(f"in {row['load_seconds']:.2f} s")
    return f"{name}: {state}, " + ", ".join(parts)


def unload_summary(row: Mapping[str, Any]) -> str:
    return f"{row.get('name')}: {row.get('state')}"


def names(items: Any) -> str:
    """Model names of a reload list: plain names, or objects naming a model (and why)."""
    if not items:
        return NONE
    out = []
    for item in items:
        if isinstance(item, Mapping):
            name = item.get("name") or item.get("model") or item.get("key") or json.dumps(item)
            why = item.get("reason") or item.get("message")
            out.append(f"{name} ({why})" if why else str(name))
        else:
            out.append(str(item))
    return ", ".join(out)


def reload_summary(answer: Mapping[str, Any]) -> str:
    """One line per outcome of POST /v1/admin/settings/reload (SPEC §2)."""
    return table(("OUTCOME", "MODELS"), [(key, names(answer.get(key))) for key in RELOAD_KEYS])


def log_lines(answer: Mapping[str, Any]) -> list[str]:
    """Each replica's lines prefixed with its id (`[0] ...`), replica after replica."""
    return [f"[{r.get('id')}] {line}" for r in answer.get("replicas") or [] for line in r.get("lines") or []]
