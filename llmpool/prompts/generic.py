"""The `generic` prompt format: plain text, no model-specific markup.

Used on raw (completion) paths: the system instructions, a blank line, then the user's
text, ending in a newline so the model starts its answer on a fresh line.
"""

from __future__ import annotations

from llmpool.generation import GenerationRequest, content_text
from llmpool.prompts import Rendered

STOP: tuple[str, ...] = ()
MULTI_TURN = False
THINKING_MODES: tuple[str, ...] = ("default",)


def render(request: GenerationRequest, thinking: str = "disabled") -> Rendered:
    """The prompt text for a single-turn request (`input` must be set)."""
    if request.input is None:
        raise ValueError("the generic raw prompt takes single-turn input")
    text = content_text(request.input)
    if request.instructions:
        return Rendered(f"{request.instructions}\n\n{text}\n", STOP)
    return Rendered(f"{text}\n", STOP)
