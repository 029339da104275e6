"""The `qwen3_template` prompt format: ChatML as in Qwen3's published chat template.

Thinking enabled: exactly the generic ChatML prompt (the model opens its own
`<think>` block).

Thinking disabled, both switches Qwen3 documents, together:
- the soft switch: the last user message's text is prefixed with `/no_think ` (the
  command, then one space, then the text as sent);
- the hard switch of the template's `enable_thinking=False`: an empty think block
  `<think>\\n\\n</think>\\n\\n` right after the final `<|im_start|>assistant\\n`.

    <|im_start|>system
    {instructions}<|im_end|>
    <|im_start|>user
    /no_think {user text}<|im_end|>
    <|im_start|>assistant
    <think>

    </think>

    (generation starts here)

Earlier assistant turns are rendered with their text only (Qwen3's template drops past
reasoning). The system block is left out without instructions. Stop: `<|im_end|>`.

`REASONING` names the thought markers for `llmpool.reasoning.ReasoningSplitter`;
`close_thinking` applies the hard switch to a prompt some other template rendered.
"""

from __future__ import annotations

from llmpool.generation import GenerationRequest
from llmpool.prompts.base import Rendered, turns
from llmpool.prompts.generic import chatml
from llmpool.reasoning import Markers

STOP: tuple[str, ...] = ("<|im_end|>",)
MULTI_TURN = True
THINKING_MODES: tuple[str, ...] = ("default", "enabled", "disabled")
NO_THINK = "/no_think "
EMPTY_THINK = "<think>\n\n</think>\n\n"
REASONING = Markers("<think>", "</think>")
# Qwen's tool calls (the Hermes convention): a JSON {"name", "arguments"} in these tags.
TOOL_CALLS = Markers("<tool_call>", "</tool_call>")


def render(request: GenerationRequest, thinking: str = "disabled") -> Rendered:
    """The Qwen3 ChatML prompt for `request`, with thinking switched off unless "enabled"."""
    conversation = turns(request)
    if thinking == "enabled":
        return Rendered(chatml(request.instructions, conversation), STOP)
    last = max(i for i, (role, _) in enumerate(conversation) if role == "user")
    conversation[last] = ("user", NO_THINK + conversation[last][1])
    return Rendered(chatml(request.instructions, conversation) + EMPTY_THINK, STOP)


def close_thinking(prompt: str) -> str:
    """`prompt` (from a GGUF's own chat template) with thinking switched off: unless the
    template already ended it with a closed think block (Qwen3's own template does, for
    enable_thinking=False), the empty block is added; a block the template forced open
    is closed at once."""
    tail = prompt.rstrip()
    if tail.endswith(REASONING.close):
        return prompt
    if tail.endswith(REASONING.open):
        return tail + "\n\n" + REASONING.close + "\n\n"
    return prompt + EMPTY_THINK
