"""vllm_serve: command construction for every mapped key, key validation, constraints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmpool.backends.vllm_serve import VllmServeAdapter
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec
from llmpool.errors import ConfigError, ModelLoadFailed
from llmpool.generation import Decoding, GenerationRequest


def spec_of(write_settings: Callable[..., Path], **keys: Any) -> ModelSpec:
    definition = {"backend": "vllm_serve", "vllm_model": "/models/m", **keys}
    write_settings({"engine": {"models": {"vs": definition}}})
    return load_settings().models["vs"]


def flag_value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, (flag, argv)
    return argv[argv.index(flag) + 1]


def test_minimal_command(write_settings: Callable[..., Path]) -> None:
    argv = VllmServeAdapter(spec_of(write_settings, target_inflight=3), 0).build_argv("/bin/vllm", 4321)
    assert argv == [
        "/bin/vllm",
        "serve",
        "/models/m",
        "--host",
        "127.0.0.1",
        "--port",
        "4321",
        "--served-model-name",
        "vs",
        "--max-num-seqs",
        "3",
    ]


def test_every_engine_key_maps_to_its_flag(write_settings: Callable[..., Path]) -> None:
    spec = spec_of(
        write_settings,
        vllm_dtype="bfloat16",
        vllm_gpu_memory_utilization=0.05,
        vllm_kv_cache_memory_bytes=2147483648,
        vllm_kv_cache_dtype="fp8",
        vllm_max_model_len=8192,
        vllm_tensor_parallel_size=2,
        vllm_trust_remote_code=True,
        vllm_enforce_eager=True,
        vllm_limit_mm_per_prompt={"image": 1},
        vllm_mm_processor_kwargs={"min_pixels": 100},
        vllm_max_pixels=4014080,
        vllm_speculative_method="mtp",
        vllm_speculative_model="google/assistant",
        vllm_speculative_moe_backend="triton",
        vllm_speculative_attention_backend="triton_attn",
        vllm_num_speculative_tokens=8,
        vllm_serve_extra_args=["--quantization", "modelopt"],
    )
    argv = VllmServeAdapter(spec, 0).build_argv("vllm", 1)
    assert flag_value(argv, "--dtype") == "bfloat16"
    assert flag_value(argv, "--gpu-memory-utilization") == "0.05"
    assert flag_value(argv, "--kv-cache-memory-bytes") == "2147483648"
    assert flag_value(argv, "--kv-cache-dtype") == "fp8"
    assert flag_value(argv, "--max-model-len") == "8192"
    assert flag_value(argv, "--tensor-parallel-size") == "2"
    assert argv.count("--trust-remote-code") == 1 and argv.count("--enforce-eager") == 1
    assert json.loads(flag_value(argv, "--limit-mm-per-prompt")) == {"image": 1}
    # vllm_max_pixels (a live override) is folded into the processor kwargs.
    assert json.loads(flag_value(argv, "--mm-processor-kwargs")) == {"min_pixels": 100, "max_pixels": 4014080}
    assert json.loads(flag_value(argv, "--speculative-config")) == {
        "method": "mtp",
        "model": "google/assistant",
        "moe_backend": "triton",
        "attention_backend": "triton_attn",
        "num_speculative_tokens": 8,
    }
    assert argv[-2:] == ["--quantization", "modelopt"]  # extra args come last


def test_switches_off_and_unset_keys_add_nothing(write_settings: Callable[..., Path]) -> None:
    argv = VllmServeAdapter(spec_of(write_settings, vllm_enforce_eager=False), 0).build_argv("vllm", 1)
    assert not [
        a
        for a in argv
        if a.startswith("--") and a not in {"--host", "--port", "--served-model-name", "--max-num-seqs"}
    ]


def test_a_load_override_changes_the_command(write_settings: Callable[..., Path]) -> None:
    spec = spec_of(write_settings, vllm_max_model_len=4096).with_overrides(
        {"vllm_max_model_len": 1024, "vllm_num_speculative_tokens": 2}
    )
    argv = VllmServeAdapter(spec, 0).build_argv("vllm", 1)
    assert flag_value(argv, "--max-model-len") == "1024"
    assert json.loads(flag_value(argv, "--speculative-config")) == {"num_speculative_tokens": 2}


def test_api_key_goes_to_the_environment_and_the_auth_header_only(
    write_settings: Callable[..., Path],
) -> None:
    adapter = VllmServeAdapter(
        spec_of(write_settings, vllm_serve_api_key="sk-1", vllm_serve_env={"A": "b"}), 0
    )
    assert "sk-1" not in " ".join(adapter.build_argv("vllm", 1))
    assert adapter.child_env() == {"A": "b", "VLLM_API_KEY": "sk-1"}
    assert adapter.headers() == {"Authorization": "Bearer sk-1"}


@pytest.mark.parametrize("flag", ["--max-num-seqs", "--max-num-seqs=4", "--port", "--speculative-config"])
def test_extra_args_may_not_set_what_the_pool_sets(write_settings: Callable[..., Path], flag: str) -> None:
    adapter = VllmServeAdapter(spec_of(write_settings, vllm_serve_extra_args=[flag, "4"]), 0)
    with pytest.raises(ModelLoadFailed, match=flag.split("=")[0]):
        adapter.load()
    assert adapter.child is None  # refused before any process started


@pytest.mark.parametrize(
    ("keys", "where"),
    [
        ({"vllm_kv_cache_dtype": "int4"}, "vllm_kv_cache_dtype"),
        ({"vllm_kv_cache_memory_bytes": 1024}, "vllm_kv_cache_memory_bytes"),
        ({"vllm_num_speculative_tokens": 17}, "vllm_num_speculative_tokens"),
        ({"vllm_max_model_len": 100}, "vllm_max_model_len"),
        ({"vllm_enforce_eager": "true"}, "vllm_enforce_eager"),
        ({"vllm_serve_unknown": 1}, "vllm_serve_unknown"),
        ({"vllm_model": None}, "vllm_model"),
    ],
)
def test_bad_keys_are_rejected_at_start_up(
    write_settings: Callable[..., Path], keys: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError, match=f"engine.models.vs.{where}"):
        spec_of(write_settings, **keys)


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("vllm_max_model_len", 256, 255),
        ("vllm_kv_cache_dtype", "fp8_e5m2", "int8"),
        ("vllm_kv_cache_memory_bytes", 256 * 1024 * 1024, 256 * 1024 * 1024 - 1),
        ("vllm_num_speculative_tokens", 16, 0),
        ("vllm_max_pixels", 1, 0),
        ("vllm_speculative_method", "mtp", ""),
    ],
)
def test_live_override_constraints(key: str, good: Any, bad: Any) -> None:
    constraint = next(c for c in VllmServeAdapter.constraints if c.key == key)
    assert constraint.problem(good) is None
    assert constraint.problem(bad) is not None


def test_limits_capabilities_and_payload(write_settings: Callable[..., Path]) -> None:
    spec = spec_of(write_settings, vllm_max_model_len=2048, modalities=["text", "image"])
    assert VllmServeAdapter.max_tokens_limit(spec) == 2048
    assert VllmServeAdapter.capabilities(spec).modalities == ("text", "image")
    assert VllmServeAdapter.max_tokens_limit(spec_of(write_settings)) is None
    request = GenerationRequest(
        input="hi",
        instructions="be brief",
        decoding=Decoding(max_tokens=7, repetition_penalty=1.2, stop=("x",), seed=3),
    )
    payload = VllmServeAdapter(spec, 0).payload(request)
    assert payload["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert payload["model"] == "vs" and payload["max_tokens"] == 7
    assert payload["repetition_penalty"] == 1.2 and payload["stop"] == ["x"] and payload["seed"] == 3


# -- reasoning formats ---------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "parser"), [("qwen3_template", "qwen3"), ("gemma4_template", "gemma4")])
def test_reasoning_formats_run_vllms_parser_and_switch_thinking(
    write_settings: Callable[..., Path], fmt: str, parser: str
) -> None:
    def parser_of(spec: ModelSpec) -> str:
        return flag_value(VllmServeAdapter(spec, 0).build_argv("/bin/vllm", 1), "--reasoning-parser")

    spec = spec_of(write_settings, prompt_format=fmt)
    assert parser_of(spec) == parser
    assert VllmServeAdapter.capabilities(spec).thinking_modes == ("default", "enabled", "disabled")
    payload = VllmServeAdapter(spec, 0).payload(GenerationRequest(input="hi", thinking="disabled"))
    assert payload["chat_template_kwargs"] == {"enable_thinking": False}
    own = spec_of(write_settings, prompt_format=fmt, vllm_serve_reasoning_parser="deepseek_r1")
    assert parser_of(own) == "deepseek_r1"
    off = spec_of(write_settings, prompt_format=fmt, vllm_serve_reasoning_parser="none")
    assert "--reasoning-parser" not in VllmServeAdapter(off, 0).build_argv("/bin/vllm", 1)
    extra = spec_of(write_settings, prompt_format=fmt, vllm_serve_extra_args=["--reasoning-parser=x"])
    assert VllmServeAdapter(extra, 0).build_argv("/bin/vllm", 1)[-1] == "--reasoning-parser=x"
    assert "--reasoning-parser" not in VllmServeAdapter(extra, 0).build_argv("/bin/vllm", 1)


def test_other_formats_run_no_reasoning_parser(write_settings: Callable[..., Path]) -> None:
    spec = spec_of(write_settings)
    assert "--reasoning-parser" not in VllmServeAdapter(spec, 0).build_argv("/bin/vllm", 1)
    assert VllmServeAdapter.capabilities(spec).thinking_modes == ("default",)
    assert "chat_template_kwargs" not in VllmServeAdapter(spec, 0).payload(GenerationRequest(input="hi"))


# -- tool calls (issue 21) -------------------------------------------------------------------
def argv_for(spec: ModelSpec) -> list[str]:
    return VllmServeAdapter(spec, 0).build_argv("/bin/vllm", 1)


@pytest.mark.parametrize("fmt", ["hermes_template", "qwen3_template"])
def test_formats_with_hermes_calls_run_vllms_hermes_parser(
    write_settings: Callable[..., Path], fmt: str
) -> None:
    spec = spec_of(write_settings, prompt_format=fmt)
    argv = argv_for(spec)
    assert "--enable-auto-tool-choice" in argv and flag_value(argv, "--tool-call-parser") == "hermes"
    assert VllmServeAdapter.capabilities(spec).tool_calls is True
    own = spec_of(write_settings, prompt_format=fmt, vllm_serve_tool_parser="llama3_json")
    assert flag_value(argv_for(own), "--tool-call-parser") == "llama3_json"
    off = spec_of(write_settings, prompt_format=fmt, vllm_serve_tool_parser="none")
    assert "--tool-call-parser" not in argv_for(off) and "--enable-auto-tool-choice" not in argv_for(off)
    assert VllmServeAdapter.capabilities(off).tool_calls is False


def test_without_a_parser_a_model_refuses_tools_unless_the_operator_names_one(
    write_settings: Callable[..., Path],
) -> None:
    plain = spec_of(write_settings)
    assert "--tool-call-parser" not in argv_for(plain) and not VllmServeAdapter.capabilities(plain).tool_calls
    named = spec_of(write_settings, vllm_serve_extra_args=["--tool-call-parser", "mistral"])
    argv = argv_for(named)
    assert VllmServeAdapter.capabilities(named).tool_calls is True
    assert argv.count("--tool-call-parser") == 1 and argv[-2:] == ["--tool-call-parser", "mistral"]
    assert argv.count("--enable-auto-tool-choice") == 1
