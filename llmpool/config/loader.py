"""Read `settings.json`, deep-merge `local.json` over it, validate strictly.

Every validation failure becomes one `ConfigError` whose message lists each bad key as
`<file>: <dotted.path>: <message>`, naming the file that supplied the key (local.json
when it sets the key, else the base file) and, for models, the model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from marshmallow import ValidationError

from llmpool.backends import registry
from llmpool.config.schema import SettingsSchema, model_schema
from llmpool.config.spec import COMMON_KEYS, ModelSpec, ServiceSettings, Settings
from llmpool.errors import ConfigError
from llmpool.generation import Decoding
from llmpool.media import policy_from_settings

SETTINGS_ENV = "LLM_POOL_SETTINGS_PATH"
LOCAL_ENV = "LLM_POOL_LOCAL_SETTINGS_PATH"
DEFAULT_SETTINGS = Path(__file__).resolve().parents[2] / "conf" / "settings.json"


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Objects merge key by key, recursively; lists and scalars in `over` replace."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def settings_paths() -> tuple[Path, Path]:
    base = Path(os.environ.get(SETTINGS_ENV) or DEFAULT_SETTINGS)
    local = Path(os.environ.get(LOCAL_ENV) or base.with_name("local.json"))
    return base, local


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    return data


def _has_path(data: Mapping[str, Any], path: list[str]) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _flatten(messages: Any, prefix: list[str]) -> list[tuple[list[str], str]]:
    if isinstance(messages, dict):
        out: list[tuple[list[str], str]] = []
        for key, value in messages.items():
            # Schema-level errors (cross-field rules) belong to the object itself.
            sub = prefix if key == "_schema" else [*prefix, str(key)]
            out.extend(_flatten(value, sub))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [(prefix, " ".join(messages))]
    if isinstance(messages, list):
        return [item for m in messages for item in _flatten(m, prefix)]
    return [(prefix, str(messages))]


class _Reporter:
    """Collects errors and attributes each to the file that set the offending key."""

    def __init__(self, base: Path, local: Path | None, local_data: Mapping[str, Any]):
        self.base, self.local, self.local_data = base, local, local_data
        self.lines: list[str] = []

    def add(self, messages: Any, prefix: list[str]) -> None:
        for path, message in _flatten(messages, prefix):
            source = self.base
            if self.local is not None and _has_path(self.local_data, path):
                source = self.local
            self.lines.append(f"{source}: {'.'.join(path)}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError("invalid settings:\n  " + "\n  ".join(self.lines))


def resolve_model_path(value: str | None, settings_dir: Path) -> str | None:
    """Absolute, relative to the settings file, or `pkg:PACKAGE/RESOURCE`.

    Packages are located with `find_spec` on the top-level name, without importing them:
    a package that only ships a model file may import things we do not have.
    """
    if value is None:
        return None
    if value.startswith("pkg:"):
        package, _, resource = value[4:].partition("/")
        if not package or not resource:
            raise ValueError("pkg: paths look like pkg:PACKAGE/RESOURCE")
        top, *subpackages = package.split(".")
        spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"package '{top}' is not installed")
        root = Path(next(iter(spec.submodule_search_locations)))
        return str(root.joinpath(*subpackages, resource))
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (settings_dir / path).resolve())


def resolve_media_dirs(media: Mapping[str, Any], settings_dir: Path) -> dict[str, Any]:
    """`media` with each of `allowed_dirs` absolute, relative ones taken from the settings
    file's directory like `model_path`. Symlinks stay: the media policy resolves them at
    each request, so it follows the directories as they are then."""
    dirs = [os.path.abspath(settings_dir / Path(d).expanduser()) for d in media["allowed_dirs"]]
    return {**media, "allowed_dirs": dirs}


def resolve_state_dir(value: str | None, settings_dir: Path) -> str:
    """Where the pool keeps what it learns (the memory ledger): as configured (relative to
    the settings file), else systemd's StateDirectory (`$STATE_DIRECTORY`), else
    `$XDG_STATE_HOME/llm-pool` (~/.local/state/llm-pool). Never beside the settings files
    by default: they may be read-only, and state is not configuration."""
    if value:
        return os.path.abspath(settings_dir / Path(value).expanduser())
    if systemd := os.environ.get("STATE_DIRECTORY"):
        return systemd.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "llm-pool")


def _model_spec(
    name: str,
    raw: Any,
    default_backend: str,
    settings_dir: Path,
    report: _Reporter,
    on_demand_default: bool = False,
) -> ModelSpec | None:
    where = ["engine", "models", name]
    if not isinstance(raw, Mapping):
        report.add(["must be an object"], where)
        return None
    backend = raw.get("backend", default_backend)
    adapter = registry.get(backend) if isinstance(backend, str) else None
    if adapter is None:
        known = ", ".join(registry.names())
        report.add([f"unknown backend {backend!r} (known: {known})"], [*where, "backend"])
        return None
    try:
        data = model_schema(default_backend, adapter.config_fields()).load(dict(raw))
        model_path = resolve_model_path(data["model_path"], settings_dir)
    except ValidationError as exc:
        report.add(exc.messages, where)
        return None
    except ValueError as exc:
        report.add([str(exc)], [*where, "model_path"])
        return None
    if data["load_on_demand"] is None:
        data["load_on_demand"] = on_demand_default
    common = {k: data[k] for k in COMMON_KEYS if k not in ("model_path", "modalities")}
    spec = ModelSpec(
        name=name,
        model_path=model_path,
        modalities=tuple(data["modalities"]),
        options={k: v for k, v in data.items() if k not in COMMON_KEYS},
        definition=dict(raw),
        **common,
    )
    if spec.memory_device is None:
        spec = dataclasses.replace(spec, memory_device=adapter.memory_device(spec))
    return spec


_startup: Settings | None = None


def remember_startup_settings(settings: Settings) -> None:
    """The settings the gunicorn master read (conf/gunicorn.conf.py): its forked worker
    starts from this very object, so the files are read once per start (a later edit
    cannot make the master and the worker disagree about the bind address or secrets)."""
    global _startup
    _startup = settings


def startup_settings() -> Settings:
    """The remembered start-up settings, else the files read now (`flask run`, tests)."""
    return _startup if _startup is not None else load_settings()


def load_settings() -> Settings:
    """Read, merge and validate the settings files; raises ConfigError."""
    base_path, local_path = settings_paths()
    base = _read_json(base_path)
    local: dict[str, Any] = {}
    sources = [str(base_path)]
    if local_path.exists():
        local = _read_json(local_path)
        sources.append(str(local_path))
    merged = deep_merge(base, local)
    report = _Reporter(base_path, local_path if local else None, local)
    try:
        top = SettingsSchema().load(merged)
    except ValidationError as exc:
        report.add(exc.messages, [])
        report.raise_if_any()
        raise AssertionError("unreachable") from exc
    engine = top["engine"]
    models: dict[str, ModelSpec] = {}
    for name, raw in engine["models"].items():
        on_demand = top["service"]["load_on_demand"]
        spec = _model_spec(name, raw, engine["backend"], base_path.parent, report, on_demand)
        if spec is not None:
            models[name] = spec
    report.raise_if_any()
    return Settings(
        service=ServiceSettings(
            **{
                **top["service"],
                "state_dir": resolve_state_dir(top["service"]["state_dir"], base_path.parent),
            }
        ),
        media=policy_from_settings(resolve_media_dirs(top["media"], base_path.parent)),
        decoding=Decoding().merged(engine["decoding"]),
        models=models,
        sources=tuple(sources),
    )
