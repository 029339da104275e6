"""Structured output's pure parts: the schema check, the answer check, and the llama.cpp
grammar that leaves a reasoning model's thoughts free (llmpool.structured,
llmpool.backends.llama_grammar)."""

from __future__ import annotations

import pytest

from llmpool.backends.llama_grammar import gbnf, grammar_for, rename_rule
from llmpool.errors import InvalidParam
from llmpool.generation import OutputFormat, Tool, ToolUse
from llmpool.reasoning import Markers
from llmpool.structured import check_schema, violation
from llmpool.tool_calls import ToolCallSplitter

SCHEMA = {
    "type": "object",
    "properties": {"root": {"type": "string"}, "n": {"type": "integer", "minimum": 1}},
    "required": ["root", "n"],
}
FMT = OutputFormat("json_schema", "response_format", SCHEMA, "thing")
THINK = Markers("<think>", "</think>")


def test_a_schema_that_is_not_one_is_a_400_naming_the_field() -> None:
    assert check_schema("text.format.schema", SCHEMA) is SCHEMA
    with pytest.raises(InvalidParam) as caught:
        check_schema("text.format.schema", {"type": "nonsense"})
    assert caught.value.param == "text.format.schema" and "not a valid JSON schema" in caught.value.message
    with pytest.raises(InvalidParam):
        check_schema("p", ["not", "an", "object"])


@pytest.mark.parametrize(
    ("answer", "finish", "expected"),
    [
        ('{"root": "a", "n": 2}', "stop", None),
        ('  {"root": "a", "n": 2}\n', "stop", None),
        ('{"root": "a", "n": 0}', "stop", "at n: 0 is less than the minimum of 1"),
        ('{"root": "a"}', "stop", "'n' is a required property"),
        ('{"root": "a", "n"', "length", "not JSON"),
        ("Sure!", "stop", "the answer is not JSON"),
    ],
)
def test_every_answer_is_checked_against_its_schema(answer: str, finish: str, expected: str | None) -> None:
    found = violation(FMT, answer, finish, "m")
    if expected is None:
        assert found is None
        return
    assert found is not None and found.code == "output_schema_violation" and found.status == 502
    assert expected in found.message and found.message.startswith("response_format: ")
    assert ("cut short by max_tokens" in found.message) == (finish == "length")


def test_json_object_means_any_object() -> None:
    fmt = OutputFormat("json_object", "text.format")
    assert violation(fmt, '{"anything": [1, 2]}', "stop", "m") is None
    found = violation(fmt, "[1, 2]", "stop", "m")
    assert found is not None and "is not of type 'object'" in found.message


def test_renaming_a_rule_leaves_literals_and_classes_alone() -> None:
    grammar = 'root ::= "{" "\\"root\\"" [root] x root\nx ::= "root" # root stays in comments\n'
    assert rename_rule(grammar, "root", "a") == (
        'a ::= "{" "\\"root\\"" [root] x a\nx ::= "root" # root stays in comments\n'
    )


def test_the_grammar_starts_where_the_thoughts_end() -> None:
    answer_only = gbnf(FMT, THINK, thinking=False, inside=False)
    assert answer_only.startswith("root ::= pool-answer\n") and "pool-thoughts" not in answer_only
    # The property named "root" is kept as it is; its rule, like every other, is prefixed.
    assert 'pool-answer-root-kv ::= "\\"root\\"" pool-answer-space' in answer_only
    forced = gbnf(FMT, THINK, thinking=True, inside=True)
    assert forced.startswith("root ::= pool-thoughts pool-ws (pool-answer)\n")
    inline = gbnf(FMT, THINK, thinking=True, inside=False)
    assert inline.startswith('root ::= ("\\u003Cthink\\u003E" pool-thoughts pool-ws)? (pool-answer)\n')
    assert gbnf(FMT, None, thinking=True, inside=False).startswith("root ::= pool-answer\n")


@pytest.mark.parametrize(("thinking", "inside"), [(False, False), (True, False), (True, True)])
def test_each_grammar_is_one_llama_cpp_parses(smollm2_path: str, thinking: bool, inside: bool) -> None:
    import llama_cpp  # make test installs it: its absence fails here

    vocab_only = llama_cpp.Llama(model_path=smollm2_path, vocab_only=True, verbose=False)
    text = gbnf(FMT, THINK, thinking=thinking, inside=inside)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab_only._model.vocab, text.encode(), b"root")
    assert sampler, text  # NULL: llama.cpp could not parse it
    llama_cpp.llama_sampler_free(sampler)
    broken = llama_cpp.llama_sampler_init_grammar(vocab_only._model.vocab, b"root ::= [", b"root")
    assert not broken  # the check above can fail
    vocab_only.close()


# -- tool calls out of the text, and the grammar that holds them ---------------------------
HERMES = Markers("<tool_call>", "</tool_call>")
WEATHER = Tool(
    "get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
)
CLOCK = Tool("get_time", {"type": "object", "properties": {"zone": {"type": "string"}}})


def split(deltas: list[str]) -> list[tuple[str, tuple[int, str, str] | None]]:
    splitter = ToolCallSplitter(HERMES)
    pieces = [p for d in deltas for p in splitter.feed(d)] + list(splitter.flush())
    return [
        (p.text, None if p.call is None else (p.call.index, p.call.name, p.call.arguments)) for p in pieces
    ]


def test_calls_are_read_out_of_the_text_wherever_the_deltas_cut_them() -> None:
    text = (
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    )
    text += '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    whole = split([text])
    assert whole == [
        ("Let me look.", None),
        ("", (0, "get_weather", '{"city": "Paris"}')),
        ("", (1, "get_time", "{}")),
    ]
    for size in (1, 3, 7):  # the same, however the stream cuts it
        pieces = split([text[i : i + size] for i in range(0, len(text), size)])
        assert "".join(t for t, _ in pieces) == "Let me look."
        assert [c for _, c in pieces if c] == [c for _, c in whole if c]


def test_plain_answers_pass_unchanged_and_a_broken_call_is_still_a_call() -> None:
    assert "".join(t for t, _ in split(["a < b ", "<tool", " c\n"])) == "a < b <tool c\n"
    [(_, call)] = split(['<tool_call>{"name": "get_weather", "argu'])  # cut by max_tokens
    assert call == (0, "", '{"name": "get_weather", "argu')  # fails its check, by name


def test_the_grammar_holds_required_and_named_calls_and_leaves_auto_free() -> None:
    required = ToolUse((WEATHER, CLOCK), "required", parallel=False)
    text = grammar_for(None, required, HERMES, None, thinking=False, inside=False)
    assert text is not None and text.startswith("root ::= pool-calls\n")
    assert "pool-calls ::= pool-call\n" in text  # one call: parallel_tool_calls false
    assert '\\"get_weather\\"' in text and '\\"get_time\\"' in text
    named = grammar_for(
        None, ToolUse((WEATHER, CLOCK), "function", "get_time"), HERMES, None, thinking=False, inside=False
    )
    assert named is not None and '\\"get_time\\"' in named and '\\"get_weather\\"' not in named
    assert 'pool-calls ::= pool-call ("\\n" pool-call)*' in named
    assert grammar_for(None, ToolUse((WEATHER,)), HERMES, None, thinking=False, inside=False) is None
    both = grammar_for(FMT, ToolUse((WEATHER,)), HERMES, THINK, thinking=True, inside=True)
    assert both is not None and both.startswith("root ::= pool-thoughts pool-ws (pool-calls | pool-answer)\n")


@pytest.mark.parametrize("choice", ["required", "function"])
def test_tool_grammars_are_ones_llama_cpp_parses(smollm2_path: str, choice: str) -> None:
    import llama_cpp

    use = ToolUse((WEATHER, CLOCK), choice, "get_time" if choice == "function" else None)
    text = grammar_for(FMT, use, HERMES, THINK, thinking=True, inside=False)
    assert text is not None
    vocab_only = llama_cpp.Llama(model_path=smollm2_path, vocab_only=True, verbose=False)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab_only._model.vocab, text.encode(), b"root")
    assert sampler, text
    llama_cpp.llama_sampler_free(sampler)
    vocab_only.close()
