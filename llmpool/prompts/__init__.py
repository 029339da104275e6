"""Prompt formats: one module per format, each turning a request into raw prompt text.

Used by every backend that builds raw prompt text (llama_cpp's raw path, ct2, exllamav3);
backends that speak chat messages (llama_server, vllm, remote) use the runtime's template.

Contract of a format module: `render(request, thinking) -> Rendered`, where `thinking` is
"enabled" or "disabled" (already resolved against the model's `enable_thinking`), plus
`MULTI_TURN: bool` (whether `render` takes `messages`) and `THINKING_MODES: tuple[str, ...]`
(what admission offers). A module may also define `check(request)`, raising
`InvalidRequest` for a request the format cannot take; admission calls it through `check`
below, before the job is queued.

No format writes the BOS token into the text: every backend's tokenizer adds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from llmpool.config.spec import ModelSpec
from llmpool.errors import InvalidRequest
from llmpool.generation import GenerationRequest, content_text


@dataclass(frozen=True)
class Rendered:
    text: str
    stop: tuple[str, ...] = ()  # the format's own stop strings (request stops are added later)


def _formats() -> dict[str, ModuleType]:
    from llmpool.prompts import gemma4, generic, mistral, qwen3, translategemma

    return {
        "generic": generic,
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


def resolve_thinking(spec: ModelSpec, request: GenerationRequest) -> str:
    """ "enabled" or "disabled": `request.thinking`, "default" following `enable_thinking`."""
    if request.thinking == "default":
        return "enabled" if spec.enable_thinking else "disabled"
    return request.thinking


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


def turns(request: GenerationRequest) -> list[tuple[str, str]]:
    """The conversation as (role, text) pairs, role "user" or "assistant", system excluded.

    Single-turn `input` is one user turn; content arrays contribute their text parts only
    (images never reach a raw prompt: admission refuses them by modality first).
    """
    if request.messages is not None:
        return [(m.role, content_text(m.content)) for m in request.messages]
    return [("user", content_text(request.input if request.input is not None else ""))]
