"""The `generic` prompt format: ChatML, the de-facto default of chat-tuned models.

    <|im_start|>system
    {instructions}<|im_end|>
    <|im_start|>user
    {user text}<|im_end|>
    <|im_start|>assistant
    {assistant text}<|im_end|>
    <|im_start|>user
    {user text}<|im_end|>
    <|im_start|>assistant
    (generation starts here, right after the newline)

The system block is left out when there are no (or empty) instructions. Every turn is
one `<|im_start|>{role}\\n{text}<|im_end|>\\n` block; the prompt ends with the open
assistant header. Stop: `<|im_end|>`. Multi-turn; no thinking control.
"""

from __future__ import annotations

from llmpool.generation import GenerationRequest
from llmpool.prompts.base import Rendered, turns

STOP: tuple[str, ...] = ("<|im_end|>",)
MULTI_TURN = True
THINKING_MODES: tuple[str, ...] = ("default",)


def chatml(system: str | None, conversation: list[tuple[str, str]]) -> str:
    """ChatML blocks for `conversation`, then the open assistant header."""
    blocks = [("system", system)] if system else []
    blocks += conversation
    body = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in blocks)
    return f"{body}<|im_start|>assistant\n"


def render(request: GenerationRequest, thinking: str = "disabled") -> Rendered:
    """The ChatML prompt for `request` (single- or multi-turn)."""
    return Rendered(chatml(request.instructions, turns(request)), STOP)
