"""Plain data handed between the HTTP layer, the scheduler and the backend adapters.

Nothing here refers to Flask or to a runtime: workers receive these objects only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# A content item as clients send it: {"type": "text", "text": ...} or
# {"type": "image_url", "image_url": {"url": ..., "detail": ...}}.
ContentItem = dict[str, Any]
Content = str | list[ContentItem]


# The decoding knobs that not every runtime has, each with the value that leaves it off.
# Every runtime honours temperature, top_p, max_tokens and stop; a request that sets one of
# these to anything but its "off" value, for a runtime without it, is a 400 naming the field
# (SPEC §11: nothing is silently ignored). engine.decoding's defaults for them apply only
# where the runtime has the knob: they are the operator's defaults, not a client's request.
KNOBS: dict[str, float | None] = {"beam_size": 1, "top_k": 0, "repetition_penalty": 1.0, "seed": None}


@dataclass(frozen=True)
class Decoding:
    beam_size: int = 1
    top_k: int = 40
    top_p: float = 0.95
    temperature: float = 0.7
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: the runtime's own seeding
    # The knobs (KNOBS) this request set, each as the client named it (`top_k`,
    # `decoding.top_k`): what `unhonoured` checks. Empty for the settings' defaults.
    sent: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def merged(self, overrides: dict[str, Any]) -> Decoding:
        """These defaults with `overrides` on top (omitted fields keep ours)."""
        return dataclasses.replace(self, **_given(overrides))

    def requested(self, fields: dict[str, Any], within: str = "") -> Decoding:
        """These defaults with a request's `fields` on top, noting the knobs it set; the
        client named them with the prefix `within` (`decoding.` in /v1/responses)."""
        values = _given(fields)
        sent = tuple((k, within + k) for k in values if k in KNOBS)
        return dataclasses.replace(self, **values, sent=sent)  # one replace: it costs ~5 µs

    def values(self) -> dict[str, Any]:
        """The settings themselves, as a dict (without `sent`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}

    def unhonoured(self, honoured: tuple[str, ...]) -> tuple[str, str] | None:
        """(knob, the client's name for it) of the first knob this request set to more than
        "off" that a runtime honouring only `honoured` would ignore; None if there is none."""
        for knob, param in self.sent:
            if knob not in honoured and getattr(self, knob) != KNOBS[knob]:
                return knob, param
        return None


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields a request set (null is "not set"), `stop` as the tuple Decoding holds."""
    values = {k: v for k, v in fields.items() if v is not None}
    if "stop" in values:
        values["stop"] = tuple(values["stop"])
    return values


@dataclass(frozen=True)
class Tool:
    """A function the client offers the model (OpenAI's `tools[].function`)."""

    name: str
    parameters: dict[str, Any]  # a JSON schema for the arguments object
    description: str | None = None

    def openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolUse:
    """The tools a request offers and what it lets the model do with them: `auto` (call
    any or none), `required` (call at least one), `function` (call `function`). A request
    whose tool_choice is `none` carries no ToolUse: the model answers in text."""

    tools: tuple[Tool, ...]
    choice: str = "auto"  # "auto" | "required" | "function"
    function: str | None = None
    parallel: bool = True  # more than one call in one answer

    @property
    def held(self) -> bool:
        """Whether the model must call (`required` or a named function), not merely may."""
        return self.choice != "auto"

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    def allowed(self) -> tuple[Tool, ...]:
        """The tools a call may name."""
        return tuple(t for t in self.tools if self.choice != "function" or t.name == self.function)

    def openai_choice(self) -> Any:
        if self.choice == "function":
            return {"type": "function", "function": {"name": self.function}}
        return self.choice


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: `arguments` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call, as OpenAI streams them: the piece that opens call
    `index` names its id and function (both set), later ones add argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant" | "tool"
    content: Content
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: the call it answers
    # Chat Completions' participant name; only runtimes that render the chat with the
    # model's own template get it (Capabilities.message_names), elsewhere it is a 400.
    name: str | None = None


@dataclass(frozen=True)
class OutputFormat:
    """A structured answer the client asked for: any JSON object (`json_object`), or JSON
    valid against `schema` (`json_schema`). `param` names the request field it came from
    (`response_format`, `text.format`), so every refusal and violation can name it."""

    kind: str  # "json_object" | "json_schema"
    param: str
    schema: dict[str, Any] | None = None  # json_schema only
    name: str | None = None
    strict: bool = False

    def json_schema(self) -> dict[str, Any]:
        """The schema the answer must satisfy (a JSON object's, for json_object)."""
        return self.schema if self.kind == "json_schema" and self.schema is not None else {"type": "object"}

    def openai(self) -> dict[str, Any]:
        """As OpenAI's Chat Completions `response_format` (what OpenAI-compatible servers,
        llama-server and vLLM's among them, take)."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {
            "name": self.name or "answer",
            "schema": self.json_schema(),
            "strict": self.strict,
        }
        return {"type": "json_schema", "json_schema": spec}


@dataclass(frozen=True)
class GenerationRequest:
    """One inference job as a backend sees it; exactly one of input/messages/prompt is set.

    `prompt` is a raw completion prompt (POST /v1/completions): every backend sends it to
    its runtime as it is, through no chat template and no prompt format (the tokenizer
    still adds BOS), and returns the runtime's text unsplit.
    """

    input: Content | None = None
    messages: tuple[Message, ...] | None = None
    instructions: str | None = None
    source_lang_code: str | None = None
    target_lang_code: str | None = None
    thinking: str = "default"
    decoding: Decoding = field(default_factory=Decoding)
    prompt: str | None = None
    output_format: OutputFormat | None = None  # a structured answer (checked before it is returned)
    tools: ToolUse | None = None  # functions the model may call (checked likewise)
    # At most this many streamed pieces of thoughts (about a token each); the job then
    # ends as if cut by max_tokens (Anthropic's thinking.budget_tokens; the executor counts).
    thinking_budget: int | None = None
    # Only the prompt's length is wanted (Anthropic's count_tokens): the runtime renders and
    # reads the prompt as for an answer and samples one token, which nobody checks.
    count_only: bool = False

    @property
    def held_tools(self) -> ToolUse | None:
        """The request's tools when they hold the model to a call, else None."""
        return self.tools if self.tools is not None and self.tools.held else None

    @property
    def has_images(self) -> bool:
        contents: list[Content] = []
        if self.input is not None:
            contents.append(self.input)
        for message in self.messages or ():
            contents.append(message.content)
        return any(
            isinstance(c, list) and any(item.get("type") == "image_url" for item in c) for c in contents
        )


def content_text(content: Content) -> str:
    """The text of a content value; a text-only array is concatenated in order."""
    if isinstance(content, str):
        return content
    return "".join(str(item.get("text", "")) for item in content if item.get("type") == "text")


@dataclass(frozen=True)
class Final:
    """What a backend knows once generation ends. Unknown numbers stay None."""

    finish_reason: str = "stop"  # stop | length
    # Which of the request's stop strings ended the text, where the runtime says so.
    stop_sequence: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    tokenize_ms: float | None = None
    time_to_first_token_ms: float | None = None
    generate_total_ms: float | None = None


@dataclass(slots=True)  # not frozen: made per token, and frozen's __init__ costs 3x
class Chunk:
    """One item of a backend's stream: a text delta, a reasoning delta, or the end.
    Never changed once made."""

    text: str = ""
    reasoning: str = ""
    final: Final | None = None
    tool_call: ToolCallDelta | None = None
