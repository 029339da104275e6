"""Golden tests of the exact prompt text of every format, the registry and admission hook
(the reasoning splitter is in test_reasoning.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmpool import prompts
from llmpool.backends.llama_cpp import LlamaCppAdapter
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec
from llmpool.errors import InvalidRequest
from llmpool.generation import Decoding, GenerationRequest, Message
from llmpool.pool import Pool
from llmpool.prompts import gemma4, generic, mistral, qwen3, translategemma
from tests.fakes import scripted_model

SINGLE = GenerationRequest(input="What is 2+2?")
SYSTEM = GenerationRequest(input="What is 2+2?", instructions="Be brief.")
MULTI = GenerationRequest(
    instructions="Be brief.",
    messages=(
        Message("user", "My name is Ann."),
        Message("assistant", "Hello Ann."),
        Message("user", [{"type": "text", "text": "What is "}, {"type": "text", "text": "my name?"}]),
    ),
)


def spec(prompt_format: str, enable_thinking: bool = False) -> ModelSpec:
    return ModelSpec(
        name="m",
        backend="llama_cpp",
        model_path=None,
        prompt_format=prompt_format,
        enable_thinking=enable_thinking,
        enabled=False,
        replicas=1,
        replica_max=1,
        target_inflight=1,
        modalities=("text",),
        max_queue=64,
        unload_timeout_s=30.0,
        options={"gguf_n_ctx": 4096},
    )


# -- registry --------------------------------------------------------------------------
def test_every_configurable_format_has_a_module() -> None:
    for name in prompts.names():
        module = prompts.get(name)
        assert callable(module.render)
        assert "default" in module.THINKING_MODES


def test_format_capabilities() -> None:
    table = {
        name: (prompts.get(name).MULTI_TURN, prompts.get(name).THINKING_MODES) for name in prompts.names()
    }
    assert table == {
        "generic": (True, ("default",)),
        "hermes_template": (True, ("default",)),
        "mistral_template": (True, ("default",)),
        "qwen3_template": (True, ("default", "enabled", "disabled")),
        "gemma4_template": (True, ("default", "enabled", "disabled")),
        "translategemma_template": (False, ("default",)),
    }


def test_llama_cpp_capabilities_follow_the_format() -> None:
    for name in prompts.names():
        caps = LlamaCppAdapter.capabilities(spec(name))
        assert caps.multi_turn is prompts.get(name).MULTI_TURN
        assert caps.thinking_modes == prompts.get(name).THINKING_MODES
        assert caps.modalities == ("text",)
        # Tools where the format says how its model writes a call (the Hermes tags).
        assert caps.tool_calls is (name in ("hermes_template", "qwen3_template")), name


def test_default_thinking_follows_enable_thinking() -> None:
    on = prompts.render(spec("qwen3_template", enable_thinking=True), SINGLE).text
    off = prompts.render(spec("qwen3_template", enable_thinking=False), SINGLE).text
    assert on == qwen3.render(SINGLE, "enabled").text
    assert off == qwen3.render(SINGLE, "disabled").text
    explicit = GenerationRequest(input="What is 2+2?", thinking="enabled")
    assert prompts.render(spec("qwen3_template"), explicit).text == on


def test_stops_are_format_stops_then_request_stops_deduplicated() -> None:
    request = GenerationRequest(input="x", decoding=Decoding(stop=("END", "<|im_end|>", "END")))
    rendered = prompts.render(spec("generic"), request)
    assert prompts.stops(rendered, request) == ["<|im_end|>", "END"]
    gemma = prompts.render(spec("gemma4_template"), request)
    assert prompts.stops(gemma, request) == ["<turn|>", "<end_of_turn>", "END", "<|im_end|>"]


# -- generic (ChatML) ------------------------------------------------------------------
def test_generic_single_turn() -> None:
    assert generic.render(SYSTEM).text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generic_multi_turn() -> None:
    assert generic.render(MULTI).text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nMy name is Ann.<|im_end|>\n"
        "<|im_start|>assistant\nHello Ann.<|im_end|>\n"
        "<|im_start|>user\nWhat is my name?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# -- qwen3 -----------------------------------------------------------------------------
def test_qwen3_single_turn_thinking_on() -> None:
    rendered = qwen3.render(SYSTEM, "enabled")
    assert rendered.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert rendered.stop == ("<|im_end|>",)


def test_qwen3_single_turn_thinking_off() -> None:
    assert qwen3.render(SINGLE, "disabled").text == (
        "<|im_start|>user\n/no_think What is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_qwen3_multi_turn_thinking_on() -> None:
    assert qwen3.render(MULTI, "enabled").text == generic.render(MULTI).text


def test_qwen3_multi_turn_thinking_off_marks_only_the_last_user_turn() -> None:
    assert qwen3.render(MULTI, "disabled").text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nMy name is Ann.<|im_end|>\n"
        "<|im_start|>assistant\nHello Ann.<|im_end|>\n"
        "<|im_start|>user\n/no_think What is my name?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


# -- mistral ---------------------------------------------------------------------------
def test_mistral_single_turn() -> None:
    rendered = mistral.render(SINGLE)
    assert rendered.text == "[INST] What is 2+2? [/INST]"
    assert rendered.stop == ("</s>",)


def test_mistral_single_turn_merges_the_system_prompt_into_the_user_turn() -> None:
    assert mistral.render(SYSTEM).text == "[INST] Be brief.\n\nWhat is 2+2? [/INST]"


def test_mistral_multi_turn_system_goes_to_the_first_user_turn_only() -> None:
    assert mistral.render(MULTI).text == (
        "[INST] Be brief.\n\nMy name is Ann. [/INST]Hello Ann.</s>[INST] What is my name? [/INST]"
    )


# -- gemma4 ----------------------------------------------------------------------------
def test_gemma4_single_turn_thinking_off() -> None:
    rendered = gemma4.render(SINGLE, "disabled")
    assert rendered.text == "<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n"
    assert rendered.stop == ("<turn|>", "<end_of_turn>")


def test_gemma4_single_turn_thinking_on_without_instructions() -> None:
    assert gemma4.render(SINGLE, "enabled").text == (
        "<|turn>system\n<|think|><turn|>\n<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n"
    )


def test_gemma4_single_turn_with_instructions() -> None:
    assert gemma4.render(SYSTEM, "disabled").text == (
        "<|turn>system\nBe brief.<turn|>\n<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n"
    )
    assert gemma4.render(SYSTEM, "enabled").text == (
        "<|turn>system\n<|think|>Be brief.<turn|>\n<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n"
    )


def test_gemma4_multi_turn() -> None:
    assert gemma4.render(MULTI, "disabled").text == (
        "<|turn>system\nBe brief.<turn|>\n"
        "<|turn>user\nMy name is Ann.<turn|>\n"
        "<|turn>model\nHello Ann.<turn|>\n"
        "<|turn>user\nWhat is my name?<turn|>\n"
        "<|turn>model\n"
    )


# -- translategemma --------------------------------------------------------------------
def test_translategemma_known_source() -> None:
    request = GenerationRequest(input="Good morning.", source_lang_code="en", target_lang_code="de")
    rendered = translategemma.render(request)
    assert rendered.text == (
        "<start_of_turn>user\n"
        "You are a professional English (en) to German (de) translator. Your goal is to accurately "
        "convey the meaning and nuances of the original English text while adhering to German "
        "grammar, vocabulary, and cultural sensitivities.\n"
        "Produce only the German translation, without any additional explanations or commentary. "
        "Please translate the following English text into German:\n\n\n"
        "Good morning.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert rendered.stop == ("<end_of_turn>",)


@pytest.mark.parametrize("source", [None, "auto", "mixed", "AUTO"])
def test_translategemma_mixed_source(source: str | None) -> None:
    request = GenerationRequest(input="Hallo, how are you?", source_lang_code=source, target_lang_code="nl")
    assert translategemma.render(request).text == (
        "<start_of_turn>user\n"
        "The text may mix several languages: detect the language of each segment and translate "
        "every segment.\n"
        "You are a professional English (en) to Dutch (nl) translator. Your goal is to accurately "
        "convey the meaning and nuances of the original English text while adhering to Dutch "
        "grammar, vocabulary, and cultural sensitivities.\n"
        "Produce only the Dutch translation, without any additional explanations or commentary. "
        "Please translate the following English text into Dutch:\n\n\n"
        "Hallo, how are you?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_translategemma_ignores_instructions_and_names_regional_codes() -> None:
    plain = GenerationRequest(input="Oi", source_lang_code="pt-BR", target_lang_code="xx")
    with_instructions = GenerationRequest(
        input="Oi", source_lang_code="pt-BR", target_lang_code="xx", instructions="Be funny."
    )
    text = translategemma.render(with_instructions).text
    assert text == translategemma.render(plain).text
    assert "a professional Portuguese (pt-BR) to xx (xx) translator" in text  # unknown code: as is


def test_translategemma_target_is_required() -> None:
    for target in (None, "", "  "):
        request = GenerationRequest(input="Hi", target_lang_code=target)
        with pytest.raises(InvalidRequest, match="target_lang_code is required"):
            translategemma.check(request)
        with pytest.raises(InvalidRequest) as info:
            prompts.check(spec("translategemma_template"), request)
        assert info.value.status == 400 and info.value.model == "m"


def test_translategemma_is_single_turn() -> None:
    with pytest.raises(ValueError):
        translategemma.render(GenerationRequest(messages=(Message("user", "hi"),), target_lang_code="de"))


def test_other_formats_have_no_admission_rule() -> None:
    for name in ("generic", "mistral_template", "qwen3_template", "gemma4_template"):
        prompts.check(spec(name), GenerationRequest(input="x"))


def test_admission_refuses_a_translation_without_target_before_queueing(
    write_settings: Callable[..., Path],
) -> None:
    model: dict[str, Any] = scripted_model(prompt_format="translategemma_template")
    write_settings({"engine": {"models": {"tg": model}}})
    pool = Pool(load_settings())
    pool.start()
    try:
        with pytest.raises(InvalidRequest, match="target_lang_code"):
            pool.submit("tg", GenerationRequest(input="Hallo"))
        job = pool.submit("tg", GenerationRequest(input="Hallo", target_lang_code="en"))
        assert job.model == "tg"
    finally:
        pool.shutdown()
