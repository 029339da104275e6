"""Prompt formats: one module per format, each turning a request into raw prompt text.

Used by every backend that builds raw prompt text (llama_cpp's raw path, ct2, exllamav3);
backends that speak chat messages (llama_server, vllm, remote) use the runtime's template.

Contract of a format module: `render(request, thinking) -> Rendered`, where `thinking` is
"enabled" or "disabled" (already resolved against the model's `enable_thinking`), plus
`MULTI_TURN: bool` and `THINKING_MODES: tuple[str, ...]` (what admission offers).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from llmpool.config.spec import ModelSpec
from llmpool.generation import GenerationRequest


@dataclass(frozen=True)
class Rendered:
    text: str
    stop: tuple[str, ...] = ()  # the format's own stop strings (request stops are added later)


def _formats() -> dict[str, ModuleType]:
    from llmpool.prompts import generic

    return {"generic": generic}


def get(name: str) -> ModuleType:
    """The module of a prompt format; KeyError for a format not implemented yet."""
    return _formats()[name]


def render(spec: ModelSpec, request: GenerationRequest) -> Rendered:
    """The raw prompt for `request` in the model's format, thinking resolved.

    `request.thinking` "default" follows the model's `enable_thinking`; admission has
    already refused modes the format does not offer (400 thinking_unsupported).
    """
    thinking = request.thinking
    if thinking == "default":
        thinking = "enabled" if spec.enable_thinking else "disabled"
    rendered: Rendered = get(spec.prompt_format).render(request, thinking)
    return rendered


def stops(rendered: Rendered, request: GenerationRequest) -> list[str]:
    """Format stops plus request stops, de-duplicated, order kept."""
    return list(dict.fromkeys([*rendered.stop, *request.decoding.stop]))
