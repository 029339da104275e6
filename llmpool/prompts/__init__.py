"""Prompt formats: one module per format, each turning a request into raw prompt text.

Used by every backend that builds raw prompt text (llama_cpp's raw path, ct2, exllamav3);
backends that speak chat messages (llama_server, vllm, remote) use the runtime's template.

Contract of a format module: `render(request, thinking) -> Rendered`, where `thinking` is
"enabled" or "disabled" (already resolved against the model's `enable_thinking`), plus
`MULTI_TURN: bool` (whether `render` takes `messages`) and `THINKING_MODES: tuple[str, ...]`
(what admission offers). A reasoning model's format also names its thought markers,
`REASONING: llmpool.reasoning.Markers` (see `reasoning_markers`). A module may also
define `check(request)`, raising `InvalidRequest` for a request the format cannot take;
admission calls it through `check` below, before the job is queued. A translation format
sets `LANG_CODES = True`: every other format refuses a request's language codes.

No format writes the BOS token into the text: every backend's tokenizer adds it.
"""

from __future__ import annotations

import functools
from types import ModuleType

from llmpool.config.spec import ModelSpec
from llmpool.errors import InvalidParam, InvalidRequest
from llmpool.generation import GenerationRequest
from llmpool.prompts.base import Rendered, turns
from llmpool.reasoning import Markers, ReasoningSplitter, opens_in_prompt

__all__ = ["Rendered", "turns"]  # with the functions below: what backends use


@functools.cache  # looked up on every request: import the formats once, not each time
def _formats() -> dict[str, ModuleType]:
    from llmpool.prompts import gemma4, generic, hermes, mistral, qwen3, translategemma

    return {
        "generic": generic,
        "hermes_template": hermes,
        "qwen3_template": qwen3,
        "mistral_template": mistral,
        "gemma4_template": gemma4,
        "translategemma_template": translategemma,
    }


def names() -> tuple[str, ...]:
    """Every prompt format's name: the settings accept exactly these."""
    return tuple(_formats())


def get(name: str) -> ModuleType:
    """The module of a prompt format; KeyError for an unknown name."""
    return _formats()[name]


def reasoning_markers(name: str) -> Markers | None:
    """The thought markers of a prompt format, None for formats without reasoning."""
    markers: Markers | None = getattr(get(name), "REASONING", None)
    return markers


def tool_call_markers(name: str) -> Markers | None:
    """The markers a prompt format's model writes its tool calls between (the Hermes
    convention), None for formats the pool cannot read tool calls of."""
    markers: Markers | None = getattr(get(name), "TOOL_CALLS", None)
    return markers


def request_tool_markers(spec: ModelSpec, request: GenerationRequest) -> Markers | None:
    """`tool_call_markers` for a request that offers tools, else None (no calls to read)."""
    return tool_call_markers(spec.prompt_format) if request.tools is not None else None


# What a request may ask of a model that reasons in a format the pool knows the markers of,
# on a runtime that takes chat messages (the switch goes through the template's
# `enable_thinking`, the split through the runtime or `splitter`).
CHAT_THINKING_MODES: tuple[str, ...] = ("default", "enabled", "disabled")


def chat_thinking_modes(spec: ModelSpec) -> tuple[str, ...]:
    """`thinking_modes` of a model served through a chat template (llama_server, vllm,
    vllm_serve, openai_remote): all three for a reasoning format, else "default" only."""
    return CHAT_THINKING_MODES if reasoning_markers(spec.prompt_format) else ("default",)


def template_kwargs(spec: ModelSpec, request: GenerationRequest) -> dict[str, bool]:
    """Chat-template variables for a reasoning format (`{"enable_thinking": bool}`, the
    switch Qwen3's and Gemma 4's templates read, and the name vLLM, SGLang and
    llama-server pass on); nothing for other formats."""
    if reasoning_markers(spec.prompt_format) is None:
        return {}
    return {"enable_thinking": resolve_thinking(spec, request) == "enabled"}


def close_thinking(spec: ModelSpec, request: GenerationRequest, prompt: str) -> str:
    """A prompt some chat template rendered, with the format's own switch applied when
    thinking is disabled (a template that ignores `enable_thinking` must not leave the
    model free to think): the format module's `close_thinking`, where it has one."""
    hook = getattr(get(spec.prompt_format), "close_thinking", None)
    if hook is None or resolve_thinking(spec, request) != "disabled":
        return prompt
    closed: str = hook(prompt)
    return closed


def splitter(spec: ModelSpec, prompt: str | None = None) -> ReasoningSplitter | None:
    """A reasoning splitter for the model's format, None for formats without reasoning.
    Given the prompt, it starts inside a block the prompt left open; without it (a
    runtime that renders the template itself) it starts in the answer."""
    markers = reasoning_markers(spec.prompt_format)
    if markers is None:
        return None
    return ReasoningSplitter(markers, inside=prompt is not None and opens_in_prompt(prompt, markers))


def request_splitter(
    spec: ModelSpec, request: GenerationRequest, prompt: str | None = None
) -> ReasoningSplitter | None:
    """`splitter` for a request; None for a raw prompt (/v1/completions), whose caller gets
    the text exactly as generated, markers included."""
    return None if request.prompt is not None else splitter(spec, prompt)


def resolve_thinking(spec: ModelSpec, request: GenerationRequest) -> str:
    """ "enabled" or "disabled": `request.thinking`, "default" following `enable_thinking`."""
    if request.thinking == "default":
        return "enabled" if spec.enable_thinking else "disabled"
    return request.thinking


def thinks(spec: ModelSpec, request: GenerationRequest) -> bool:
    """Whether the request may produce thoughts: a reasoning format, thinking on."""
    return reasoning_markers(spec.prompt_format) is not None and resolve_thinking(spec, request) == "enabled"


def render(spec: ModelSpec, request: GenerationRequest) -> Rendered:
    """The raw prompt for `request` in the model's format, thinking resolved.

    `request.thinking` "default" follows the model's `enable_thinking`; admission has
    already refused modes the format does not offer (400 thinking_unsupported). A raw
    `request.prompt` is returned as it is, with no format stops.
    """
    if request.prompt is not None:
        return Rendered(request.prompt)
    rendered: Rendered = get(spec.prompt_format).render(request, resolve_thinking(spec, request))
    return rendered


def check(spec: ModelSpec, request: GenerationRequest) -> None:
    """Raise `InvalidRequest` (400) for a request the model's format cannot take."""
    module = get(spec.prompt_format)
    if not getattr(module, "LANG_CODES", False):  # only a translation format reads them
        for name in ("source_lang_code", "target_lang_code"):
            if getattr(request, name) is not None:
                message = (
                    f"{name}: model '{spec.name}' (prompt_format '{spec.prompt_format}') is not a "
                    "translation model and would ignore it; leave it out"
                )
                raise InvalidParam(name, message)
    hook = getattr(module, "check", None)
    if hook is None or request.prompt is not None:  # a raw prompt is the client's own format
        return
    try:
        hook(request)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, model=spec.name) from None


def stops(rendered: Rendered, request: GenerationRequest) -> list[str]:
    """Format stops plus request stops, de-duplicated, order kept."""
    return list(dict.fromkeys([*rendered.stop, *request.decoding.stop]))
