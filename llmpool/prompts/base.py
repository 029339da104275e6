"""What every prompt format module builds on (formats import this, never the package,
whose `__init__` imports the formats)."""

from __future__ import annotations

from dataclasses import dataclass

from llmpool.generation import GenerationRequest, content_text


@dataclass(frozen=True)
class Rendered:
    text: str
    stop: tuple[str, ...] = ()  # the format's own stop strings (request stops are added later)


def turns(request: GenerationRequest) -> list[tuple[str, str]]:
    """The conversation as (role, text) pairs, role "user" or "assistant", system excluded.

    Single-turn `input` is one user turn; content arrays contribute their text parts only
    (images never reach a raw prompt: admission refuses them by modality first).
    """
    if request.messages is not None:
        return [(m.role, content_text(m.content)) for m in request.messages]
    return [("user", content_text(request.input if request.input is not None else ""))]
