"""The metrics payload, the generic prompt format (golden strings) and definition redaction."""

from __future__ import annotations

import pytest

from llmpool.generation import Final, GenerationRequest, Message, content_text
from llmpool.metrics import METRIC_KEYS, JobTimes, build_metrics
from llmpool.prompts import generic
from llmpool.secrets import redact

# -- metrics ---------------------------------------------------------------------------
FULL_TIMES = JobTimes(
    pool_started=10.0,
    enqueued=10.1,
    started=10.6,  # 500 ms in the queue
    backend_started=10.7,
    backend_finished=11.7,  # 1000 ms inside the adapter
    finished=11.8,
)
FULL_FINAL = Final(
    finish_reason="stop",
    prompt_tokens=7,
    output_tokens=50,
    tokenize_ms=2.5,
    time_to_first_token_ms=100.0,
    generate_total_ms=500.0,
)


def test_metric_keys_are_the_documented_ones() -> None:
    assert set(METRIC_KEYS) == {
        "pool_total_wall_ms",
        "engine_total_wall_ms",
        "backend_inference_wall_ms",
        "engine_queue_wait_ms",
        "engine_outside_backend_wall_ms",
        "engine_tokenize_ms",
        "gpu_time_to_first_token_ms",
        "gpu_generate_total_ms",
        "gpu_decode_after_first_token_ms",
        "engine_prompt_tokens",
        "engine_output_tokens",
        "engine_tokens_per_second",
        "replica",
    }


def test_full_metrics_values() -> None:
    m = build_metrics(FULL_TIMES, FULL_FINAL, replica=1, now=12.0)
    assert list(m) == list(METRIC_KEYS)
    assert m["pool_total_wall_ms"] == pytest.approx(2000.0)
    assert m["engine_total_wall_ms"] == pytest.approx(1700.0)
    assert m["engine_queue_wait_ms"] == pytest.approx(500.0)
    assert m["backend_inference_wall_ms"] == pytest.approx(1000.0)
    assert m["engine_outside_backend_wall_ms"] == pytest.approx(200.0)  # 1700 - 500 - 1000
    assert m["engine_tokenize_ms"] == 2.5
    assert m["gpu_time_to_first_token_ms"] == 100.0
    assert m["gpu_generate_total_ms"] == 500.0
    assert m["gpu_decode_after_first_token_ms"] == pytest.approx(400.0)
    assert m["engine_prompt_tokens"] == 7
    assert m["engine_output_tokens"] == 50
    assert m["replica"] == 1


def test_tokens_per_second_is_output_tokens_over_generate_seconds() -> None:
    m = build_metrics(FULL_TIMES, FULL_FINAL, replica=0, now=12.0)
    assert m["engine_tokens_per_second"] == pytest.approx(50 / 0.5)
    final = Final(output_tokens=30, generate_total_ms=1500.0)
    m = build_metrics(FULL_TIMES, final, replica=0, now=12.0)
    assert m["engine_tokens_per_second"] == pytest.approx(20.0)


def test_timers_nest() -> None:
    m = build_metrics(FULL_TIMES, FULL_FINAL, replica=0, now=12.0)
    pool, engine, backend = (
        m["pool_total_wall_ms"],
        m["engine_total_wall_ms"],
        m["backend_inference_wall_ms"],
    )
    assert isinstance(pool, float) and isinstance(engine, float) and isinstance(backend, float)
    assert pool >= engine >= backend


def test_unknown_values_are_none_but_every_key_is_present() -> None:
    times = JobTimes(pool_started=1.0, enqueued=1.0)  # rejected or cancelled while queued
    m = build_metrics(times, None, replica=None, now=1.25)
    assert list(m) == list(METRIC_KEYS)
    assert m["pool_total_wall_ms"] == pytest.approx(250.0)
    assert m["engine_total_wall_ms"] == pytest.approx(250.0)  # up to now: not finished
    known = {"pool_total_wall_ms", "engine_total_wall_ms"}
    assert all(m[k] is None for k in METRIC_KEYS if k not in known)


def test_final_without_counts_leaves_token_metrics_none() -> None:
    m = build_metrics(FULL_TIMES, Final(), replica=0, now=12.0)
    for key in (
        "engine_tokenize_ms",
        "gpu_time_to_first_token_ms",
        "gpu_generate_total_ms",
        "gpu_decode_after_first_token_ms",
        "engine_prompt_tokens",
        "engine_output_tokens",
        "engine_tokens_per_second",
    ):
        assert m[key] is None, key
    assert m["backend_inference_wall_ms"] == pytest.approx(1000.0)


def test_tokens_per_second_is_none_when_generation_time_is_zero() -> None:
    m = build_metrics(FULL_TIMES, Final(output_tokens=3, generate_total_ms=0.0), replica=0, now=12.0)
    assert m["engine_tokens_per_second"] is None


# -- generic prompt format (ChatML) ---------------------------------------------------
def test_generic_prompt_without_instructions() -> None:
    assert generic.render(GenerationRequest(input="Hello there")).text == (
        "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_generic_prompt_with_instructions() -> None:
    request = GenerationRequest(input="Hello there", instructions="You are terse.")
    assert generic.render(request).text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHello there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generic_prompt_ignores_empty_instructions() -> None:
    assert generic.render(GenerationRequest(input="Hi", instructions="")).text == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_generic_prompt_concatenates_a_text_only_content_array() -> None:
    request = GenerationRequest(
        input=[{"type": "text", "text": "Translate: "}, {"type": "text", "text": "bonjour"}],
        instructions="Be brief.",
    )
    assert generic.render(request).text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nTranslate: bonjour<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generic_prompt_renders_multi_turn_messages() -> None:
    request = GenerationRequest(
        messages=(Message("user", "hi"), Message("assistant", "hello"), Message("user", "bye"))
    )
    assert generic.render(request).text == (
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nbye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generic_format_stops_at_the_end_of_turn_marker() -> None:
    assert generic.STOP == ("<|im_end|>",)
    assert generic.render(GenerationRequest(input="x")).stop == ("<|im_end|>",)


def test_content_text_skips_non_text_items() -> None:
    content = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "text", "text": "b"},
    ]
    assert content_text(content) == "ab"
    assert content_text("plain") == "plain"


def test_has_images_looks_at_input_and_messages() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    assert GenerationRequest(input=[image]).has_images
    assert GenerationRequest(messages=(Message("user", [image]),)).has_images
    assert not GenerationRequest(input=[{"type": "text", "text": "x"}]).has_images
    assert not GenerationRequest(input="x").has_images


# -- redaction -------------------------------------------------------------------------
def test_redact_hides_every_key_ending_in_api_key() -> None:
    definition = {
        "backend": "openai_remote",
        "remote_api_key": "sk-secret",
        "api_key": "another",
        "nested": {"openai_api_key": "deep", "keep": 1},
        "list": [{"x_api_key": "in-a-list"}, "plain"],
    }
    assert redact(definition) == {
        "backend": "openai_remote",
        "remote_api_key": "***",
        "api_key": "***",
        "nested": {"openai_api_key": "***", "keep": 1},
        "list": [{"x_api_key": "***"}, "plain"],
    }


def test_redact_keeps_env_var_names_and_unset_keys() -> None:
    # The *name* of the env var holding the key is not a secret; an unset key shows null.
    definition = {"remote_api_key_env": "OPENAI_API_KEY", "remote_api_key": None}
    assert redact(definition) == definition


def test_redact_does_not_modify_its_input() -> None:
    definition = {"remote_api_key": "sk-secret"}
    redact(definition)
    assert definition == {"remote_api_key": "sk-secret"}
