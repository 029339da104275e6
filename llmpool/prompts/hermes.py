"""The `hermes_template` prompt format: a model whose own chat template renders `tools`
and teaches the Hermes convention for calls (Hermes 2 Pro, Qwen2.5, and SmolLM2's tool
copy in the tests): each call one JSON object `{"name": ..., "arguments": {...}}` between
`<tool_call>` and `</tool_call>`.

Requests go through the GGUF's template (it alone knows how this model was shown tools);
a runtime without the template falls back to ChatML for text-only requests, as `generic`
does. No thinking control.
"""

from __future__ import annotations

from llmpool.generation import GenerationRequest
from llmpool.prompts.base import Rendered
from llmpool.prompts.generic import render as chatml_render
from llmpool.reasoning import Markers

STOP: tuple[str, ...] = ("<|im_end|>",)
MULTI_TURN = True
THINKING_MODES: tuple[str, ...] = ("default",)
TOOL_CALLS = Markers("<tool_call>", "</tool_call>")


def render(request: GenerationRequest, thinking: str = "disabled") -> Rendered:
    return chatml_render(request, thinking)
