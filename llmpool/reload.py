"""What a settings reload would change (SPEC §2), decided before anything is applied.

`plan_reload` compares the running settings with freshly read ones:

- models: added, removed, updated (any difference in the definition) or unchanged; a model
  that is removed or updated must be idle (`unloaded`, or `failed` with nothing left
  running), else it is a conflict;
- `engine.decoding` and `media` apply to requests admitted after the reload;
- `service` cannot change in a running process (the bind address, the secrets read at
  start-up, the log setup): any difference there is a conflict naming the key, so a
  changed token is never reported as applied while the old one keeps working.

Any conflict makes the whole reload a 409 and nothing is applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmpool.config.spec import Settings
from llmpool.model import ModelEntry
from llmpool.states import ModelState


@dataclass
class ReloadPlan:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    settings_changed: list[str] = field(default_factory=list)  # "engine.decoding", "media"

    def report(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "conflicts": self.conflicts,
            "settings_changed": self.settings_changed,
        }


def replaceable(entry: ModelEntry) -> bool:
    """Nothing of the model is running: its definition may be swapped."""
    if entry.state is ModelState.UNLOADED:
        return True
    return entry.state is ModelState.FAILED and entry.executor is None


def plan_reload(current: Settings, new: Settings, entries: Mapping[str, ModelEntry]) -> ReloadPlan:
    plan = ReloadPlan()
    old_service, new_service = dataclasses.asdict(current.service), dataclasses.asdict(new.service)
    for key in old_service:
        if old_service[key] != new_service[key]:
            plan.conflicts.append(
                {
                    "key": f"service.{key}",
                    "reason": "service settings apply at start-up only: restart the pool",
                }
            )
    if current.decoding != new.decoding:
        plan.settings_changed.append("engine.decoding")
    if current.media != new.media:
        plan.settings_changed.append("media")
    for name, spec in new.models.items():
        old = current.models.get(name)
        if old is None:
            plan.added.append(name)
        elif old == spec:
            plan.unchanged.append(name)
        else:
            plan.updated.append(name)
    plan.removed = [name for name in current.models if name not in new.models]
    for name in [*plan.updated, *plan.removed]:
        entry = entries[name]
        if not replaceable(entry):
            plan.conflicts.append(
                {
                    "model": name,
                    "state": entry.state.value,
                    "reason": f"model is {entry.state.value}; unload it before changing its definition",
                }
            )
    return plan
