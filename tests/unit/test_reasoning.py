"""The reasoning splitter (llmpool.reasoning) on Qwen3's and Gemma 4's markers: every way
a stream can be cut, forced-open blocks, unterminated blocks, and what flush releases."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from llmpool import prompts
from llmpool.prompts import qwen3
from llmpool.reasoning import Markers, ReasoningSplitter, opens_in_prompt

QWEN = prompts.reasoning_markers("qwen3_template")
GEMMA = prompts.reasoning_markers("gemma4_template")
assert QWEN is not None and GEMMA is not None
BOTH = pytest.mark.parametrize("markers", [QWEN, GEMMA], ids=["qwen3", "gemma4"])


def split(markers: Markers, deltas: list[str], *, inside: bool = False) -> tuple[str, str]:
    """(answer, reasoning) of a stream; also checks every piece has exactly one side."""
    splitter = ReasoningSplitter(markers, inside=inside)
    pieces = [p for d in deltas for p in splitter.feed(d)] + list(splitter.flush())
    assert all(bool(t) != bool(r) for t, r in pieces), pieces
    return "".join(t for t, _ in pieces), "".join(r for _, r in pieces)


def stream(m: Markers, before: str = "") -> str:
    return f"{before}{m.open}\nLet me add: 2+2.\n{m.close}\n\nIt is 4."


def test_formats_name_their_markers() -> None:
    assert QWEN == Markers("<think>", "</think>")
    assert GEMMA == Markers("<|channel>thought", "<channel|>")
    for name in ("generic", "mistral_template", "translategemma_template"):
        assert prompts.reasoning_markers(name) is None


@BOTH
def test_whole_stream_in_one_delta(markers: Markers) -> None:
    assert split(markers, [stream(markers)]) == ("It is 4.", "Let me add: 2+2.")


@BOTH
def test_every_cut_into_two_deltas(markers: Markers) -> None:
    text = stream(markers)
    for cut in range(len(text) + 1):
        assert split(markers, [text[:cut], text[cut:]]) == ("It is 4.", "Let me add: 2+2."), cut


@BOTH
def test_every_cut_into_three_deltas(markers: Markers) -> None:
    text = stream(markers)
    for a, b in itertools.combinations(range(len(text) + 1), 2):
        got = split(markers, [text[:a], text[a:b], text[b:]])
        assert got == ("It is 4.", "Let me add: 2+2."), (a, b)


@BOTH
def test_one_character_at_a_time(markers: Markers) -> None:
    assert split(markers, list(stream(markers))) == ("It is 4.", "Let me add: 2+2.")


@BOTH
def test_text_before_the_block_is_answer(markers: Markers) -> None:
    text = stream(markers, before="Well: ")
    for cut in range(len(text) + 1):
        assert split(markers, [text[:cut], text[cut:]]) == ("Well: It is 4.", "Let me add: 2+2."), cut


@BOTH
def test_no_markers_is_all_answer(markers: Markers) -> None:
    assert split(markers, ["Just ", "an ", "answer.\n"]) == ("Just an answer.\n", "")


@BOTH
def test_unterminated_block_is_all_reasoning(markers: Markers) -> None:
    text = f"{markers.open}\nStill thinking, and then"
    for cut in range(len(text) + 1):
        assert split(markers, [text[:cut], text[cut:]]) == ("", "Still thinking, and then"), cut


@BOTH
def test_forced_open_block_has_only_the_close_marker(markers: Markers) -> None:
    text = f"The user wants 4.\n{markers.close}\n\nIt is 4."
    for cut in range(len(text) + 1):
        assert split(markers, [text[:cut], text[cut:]], inside=True) == ("It is 4.", "The user wants 4."), cut


@BOTH
def test_forced_open_block_that_never_closes(markers: Markers) -> None:
    assert split(markers, ["\nhmm, ", "what"], inside=True) == ("", "hmm, what")


@BOTH
def test_a_repeated_open_marker_in_a_forced_open_block_is_dropped(markers: Markers) -> None:
    text = f"{markers.open}\nThinking.\n{markers.close}\n\nDone."
    assert split(markers, [text], inside=True) == ("Done.", "Thinking.")


@BOTH
def test_a_stray_close_marker_never_reaches_the_answer(markers: Markers) -> None:
    text = f"Answer{markers.close} more"
    for cut in range(len(text) + 1):
        assert split(markers, [text[:cut], text[cut:]]) == ("Answer more", ""), cut


@BOTH
def test_flush_releases_a_partial_marker_as_answer(markers: Markers) -> None:
    for size in range(1, len(markers.open)):
        partial = markers.open[:size]
        splitter = ReasoningSplitter(markers)
        assert list(splitter.feed("Hi " + partial)) == [("Hi ", "")]  # the partial is held
        assert list(splitter.flush()) == [(partial, "")]


@BOTH
def test_flush_releases_a_partial_close_marker_as_reasoning(markers: Markers) -> None:
    partial = markers.close[:-1]
    assert split(markers, [markers.open + "hmm\n", partial]) == ("", "hmm\n" + partial)


@BOTH
def test_held_back_near_miss_continues_as_text(markers: Markers) -> None:
    near = markers.open[:-1] + "X"
    assert split(markers, ["a " + near[:3], near[3:] + " b"]) == (f"a {near} b", "")


def test_reasoning_streams_as_it_comes() -> None:
    assert GEMMA is not None
    splitter = ReasoningSplitter(GEMMA)
    assert list(splitter.feed("<|channel>thought\nStep one")) == [("", "Step one")]
    assert list(splitter.feed(" and two<chan")) == [("", " and two")]
    assert list(splitter.feed("nel|>Answer")) == [("Answer", "")]
    assert list(splitter.flush()) == []


def test_newlines_inside_reasoning_are_kept() -> None:
    assert QWEN is not None
    assert split(QWEN, ["<think>\nOne.\n", "\nTwo.\n</think>\n\nA"]) == ("A", "One.\n\nTwo.")


def test_opens_in_prompt_looks_at_the_very_end_only() -> None:
    assert QWEN is not None
    assert opens_in_prompt("<|im_start|>assistant\n<think>\n", QWEN)
    assert not opens_in_prompt("<|im_start|>assistant\n", QWEN)
    assert not opens_in_prompt("<|im_start|>assistant\n<think>\n\n</think>\n\n", QWEN)
    assert not opens_in_prompt("user: what is <think>?<|im_end|>\n<|im_start|>assistant\n", QWEN)


def test_qwen3_close_thinking_on_a_foreign_template() -> None:
    plain = "<|im_start|>assistant\n"
    assert qwen3.close_thinking(plain) == plain + qwen3.EMPTY_THINK
    assert qwen3.close_thinking(plain + "<think>\n") == plain + "<think>\n\n</think>\n\n"
    closed = plain + qwen3.EMPTY_THINK
    assert qwen3.close_thinking(closed) == closed


def test_split_chunks_flushes_before_the_final_chunk_and_closes_the_source() -> None:
    from llmpool.generation import Chunk, Final
    from llmpool.reasoning import split_chunks

    assert QWEN is not None
    closed: list[bool] = []

    def source() -> Iterator[Chunk]:
        try:
            yield Chunk(text="<think>x</th")
            yield Chunk(text="ink>ans <")
            yield Chunk(final=Final(finish_reason="stop"))
            yield Chunk(text="never")
        finally:
            closed.append(True)

    out = split_chunks(source(), ReasoningSplitter(QWEN))
    got = [next(out) for _ in range(4)]
    assert [(c.text, c.reasoning) for c in got[:3]] == [("", "x"), ("ans ", ""), ("<", "")]
    assert got[3].final is not None
    out.close()
    assert closed == [True]
