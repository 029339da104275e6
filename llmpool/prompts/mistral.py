"""The `mistral_template` prompt format: Mistral's v1 (SentencePiece) `[INST]` template.

    [INST] {instructions}\\n\\n{user 1} [/INST]{assistant 1}</s>[INST] {user 2} [/INST]

Conventions, as in Mistral-7B-Instruct's original chat template:
- each user turn is `[INST] ` + text + ` [/INST]` (one space inside each bracket);
- each assistant turn follows its `[/INST]` directly (no space) and ends with `</s>`;
- there is no system role: the instructions, then a blank line, go in front of the
  *first* user turn's text;
- the leading `<s>` (BOS) is not in the text: the tokenizer adds it.

The prompt ends right after the last `[/INST]`. Stop: `</s>`. Multi-turn; no thinking
control.
"""

from __future__ import annotations

from llmpool.generation import GenerationRequest
from llmpool.prompts.base import Rendered, turns

STOP: tuple[str, ...] = ("</s>",)
MULTI_TURN = True
THINKING_MODES: tuple[str, ...] = ("default",)


def render(request: GenerationRequest, thinking: str = "disabled") -> Rendered:
    """The `[INST]` prompt for `request` (single- or multi-turn)."""
    parts: list[str] = []
    system = request.instructions
    for role, text in turns(request):
        if role == "user":
            if system:
                text, system = f"{system}\n\n{text}", None
            parts.append(f"[INST] {text} [/INST]")
        else:
            parts.append(f"{text}</s>")
    return Rendered("".join(parts), STOP)
