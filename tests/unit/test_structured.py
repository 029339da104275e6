"""Structured output's pure parts: the schema check, the answer check, and the llama.cpp
grammar that leaves a reasoning model's thoughts free (llmpool.structured,
llmpool.backends.llama_grammar)."""

from __future__ import annotations

import pytest

from llmpool.backends.llama_grammar import gbnf, rename_rule
from llmpool.errors import InvalidParam
from llmpool.generation import OutputFormat
from llmpool.reasoning import Markers
from llmpool.structured import check_schema, violation

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
    assert 'root-kv ::= "\\"root\\"" space' in answer_only  # the property and its rule, kept
    forced = gbnf(FMT, THINK, thinking=True, inside=True)
    assert forced.startswith("root ::= pool-thoughts pool-ws pool-answer\n")
    inline = gbnf(FMT, THINK, thinking=True, inside=False)
    assert inline.startswith('root ::= ("\\u003Cthink\\u003E" pool-thoughts pool-ws)? pool-answer\n')
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
