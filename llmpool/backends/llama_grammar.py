"""The GBNF grammar that constrains an in-process llama.cpp generation to structured output.

The answer's rules come from llama-cpp-python's own JSON-schema converter
(`json_schema_to_gbnf`). What is ours is where the constraint starts: on a reasoning
model the grammar lets the thoughts run free up to the format's close marker and then
demands the answer, so the schema constrains the answer and not the thoughts:

- the prompt left a thought block open ("forced open"): thoughts, the close marker, the
  answer;
- thinking is on and the model opens its block itself: an optional block, the answer;
- otherwise (thinking off, or a format without markers): the answer alone.

"Thoughts" are any text in which the close marker has not begun; a text that repeats the
marker's first character just before it (`<</think>`) is read as still thinking, and the
model ends its thoughts with the next clean marker.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmpool.generation import OutputFormat, ToolUse
from llmpool.reasoning import Markers

ANSWER = "pool-answer"
_RULE_NAME = re.compile(r"[A-Za-z0-9-]+")
_DEFINITION = re.compile(r"^([A-Za-z0-9-]+)\s*::=", re.M)


def gbnf(fmt: OutputFormat, markers: Markers | None, *, thinking: bool, inside: bool) -> str:
    """The grammar of a structured answer (its start rule is `root`, as llama.cpp requires)."""
    grammar = grammar_for(fmt, None, None, markers, thinking=thinking, inside=inside)
    assert grammar is not None
    return grammar


def grammar_for(
    fmt: OutputFormat | None,
    tools: ToolUse | None,
    tool_markers: Markers | None,
    markers: Markers | None,
    *,
    thinking: bool,
    inside: bool,
) -> str | None:
    """The grammar for what a request demands of the answer, None when it demands nothing
    a grammar must hold (tools on `auto` without a format: calls are read afterwards).

    - a format: the answer is JSON that fits it;
    - tools on `required`, or a named one: the answer is calls, in the format's tags;
    - both, tools on `auto`: calls, or the JSON answer.
    """
    rules: list[str] = []
    choices: list[str] = []
    if tools is not None and tool_markers is not None and (tools.held or fmt is not None):
        rules += _calls(tools, tool_markers)
        choices.append("pool-calls")
    if fmt is not None and (tools is None or not tools.held):
        rules.append(_converted(fmt.json_schema(), ANSWER))
        choices.append(ANSWER)
    if not choices:
        return None
    body = " | ".join(choices)
    if markers is None or not (thinking or inside):
        return "\n".join([f"root ::= {body}", *rules])
    rules += [
        f"pool-thoughts ::= pool-free* {literal(markers.close)}",
        f"pool-free ::= {_not_starting(markers.close)}",
        "pool-ws ::= [ \\t\\n]*",
    ]
    if inside:
        root = f"root ::= pool-thoughts pool-ws ({body})"
    else:
        root = f"root ::= ({literal(markers.open)} pool-thoughts pool-ws)? ({body})"
    return "\n".join([root, *rules])


def _calls(tools: ToolUse, markers: Markers) -> list[str]:
    """One call, or several when the request allows parallel calls: each a JSON object
    naming an allowed tool and giving arguments that fit that tool's schema."""
    one_of = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools.allowed()
    ]
    schema = one_of[0] if len(one_of) == 1 else {"anyOf": one_of}
    repeat = ' ("\\n" pool-call)*' if tools.parallel else ""
    return [
        f"pool-calls ::= pool-call{repeat}",
        f'pool-call ::= {literal(markers.open)} "\\n"? pool-call-json "\\n"? {literal(markers.close)}',
        _converted(schema, "pool-call-json"),
    ]


def _converted(schema: dict[str, Any], name: str) -> str:
    """llama-cpp-python's grammar for `schema`, every rule prefixed so that grammars of
    several schemas live side by side, its root named `name`."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # lazy: only this backend has it

    text = json_schema_to_gbnf(json.dumps(schema))
    for rule in sorted(set(_DEFINITION.findall(text)), key=len, reverse=True):
        text = rename_rule(text, rule, name if rule == "root" else f"{name}-{rule}")
    return text


def _not_starting(marker: str) -> str:
    """One piece of text that is not the start of `marker`: a character other than its
    first, or a proper prefix of it followed by a character that breaks it."""
    body = f"[^{_char(marker[-1])}]"
    for i in range(len(marker) - 2, -1, -1):
        body = f"[^{_char(marker[i])}] | {literal(marker[i])} ({body})"
    return body


def literal(text: str) -> str:
    return '"' + "".join(_char(c) for c in text) + '"'


def _char(c: str) -> str:
    """`c` as GBNF writes it inside a literal or a character class."""
    return c if c.isalnum() else f"\\u{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08X}"


def rename_rule(grammar: str, old: str, new: str) -> str:
    """`grammar` with the rule `old` named `new`, at its definition and every reference
    (rule names outside string literals and character classes)."""
    out: list[str] = []
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c in '"[':
            end = _skip_quoted(grammar, i, '"' if c == '"' else "]")
            out.append(grammar[i:end])
            i = end
            continue
        if c == "#":  # a comment runs to the end of the line
            end = grammar.find("\n", i)
            end = n if end < 0 else end
            out.append(grammar[i:end])
            i = end
            continue
        match = _RULE_NAME.match(grammar, i)
        if match is None:
            out.append(c)
            i += 1
            continue
        word = match.group()
        out.append(new if word == old else word)
        i = match.end()
    return "".join(out)


def _skip_quoted(text: str, start: int, closing: str) -> int:
    """The index after the literal or class that opens at `start` (escapes honoured)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == closing:
            return i + 1
        i += 1
    return len(text)
