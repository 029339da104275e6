"""The `gemma4_template` prompt format: Gemma 4's turn markup, and its reasoning splitter.

Runtimes that carry the model's own chat template (llama_cpp with a GGUF template,
vllm, llama_server) use that template; this text is for raw-prompt runtimes (and for
llama_cpp when the GGUF has no template):

    <|turn>system
    <|think|>{instructions}<turn|>
    <|turn>user
    {user text}<turn|>
    <|turn>model
    {assistant text}<turn|>
    <|turn>user
    {user text}<turn|>
    <|turn>model
    (generation starts here)

Conventions, as in Gemma 4's published template:
- every turn is `<|turn>{role}\\n{text}<turn|>\\n`, roles `system`, `user`, `model`;
- thinking enabled: the system turn starts with `<|think|>` (a system turn holding only
  `<|think|>` when there are no instructions); the model then reasons inside
  `<|channel>thought\\n…<channel|>` before its answer;
- thinking disabled: no `<|think|>`, and no system turn without instructions;
- the BOS token is not in the text: the tokenizer adds it.

Stops: `<turn|>` (Gemma 4's end of turn) and `<end_of_turn>` (Gemma 3's, for checkpoints
converted with the older markup). `REASONING` names the thought markers for
`llmpool.reasoning.ReasoningSplitter`.
"""

from __future__ import annotations

from llmpool.generation import GenerationRequest
from llmpool.prompts.base import Rendered, turns
from llmpool.reasoning import Markers

STOP: tuple[str, ...] = ("<turn|>", "<end_of_turn>")
MULTI_TURN = True
THINKING_MODES: tuple[str, ...] = ("default", "enabled", "disabled")
THINK = "<|think|>"
REASONING = Markers("<|channel>thought", "<channel|>")


def render(request: GenerationRequest, thinking: str = "disabled") -> Rendered:
    """The Gemma 4 prompt for `request` (single- or multi-turn)."""
    system = request.instructions or ""
    if thinking == "enabled":
        system = THINK + system
    blocks = [("system", system)] if system else []
    blocks += [("model" if role == "assistant" else role, text) for role, text in turns(request)]
    body = "".join(f"<|turn>{role}\n{text}<turn|>\n" for role, text in blocks)
    return Rendered(f"{body}<|turn>model\n", STOP)
