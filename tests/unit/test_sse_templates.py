"""Events rendered once per stream and filled per token (`sse.Template`) are the very text
of events built and encoded whole: the relay's fast path changes no byte a client sees."""

from __future__ import annotations

import json
import time

import pytest

from llmpool.generation import GenerationRequest, ToolCallDelta
from llmpool.job import Delta, Job
from llmpool.metrics import JobTimes
from llmpool.serving.chat_api import ChatChunks
from llmpool.serving.responses_api import ResponsesStream
from llmpool.serving.responses_shape import ResponseEvents
from llmpool.serving.sse import Template, data_line, frame

TEXTS = [
    " Paris",
    "",
    'quote " and back\\slash',
    "line\nbreak\ttab\x00nul\x1f",
    "del \x7f",  # the one ASCII character json escapes and orjson does not
    "é ü 中文 🙂",
    "\ud83d",  # half of a surrogate pair, as a runtime that cut an emoji in two passes it
    "\ue000slot0\ue000",  # looks like a placeholder: it is just text
    "</script>",
]


def job() -> Job:
    now = time.monotonic()
    return Job(model="m", request=GenerationRequest(input="hi"), times=JobTimes(now, now))


@pytest.mark.parametrize("text", TEXTS)
def test_a_filled_template_is_the_whole_event_encoded(text: str) -> None:
    one = Template(lambda value: data_line({"a": 1, "delta": {"content": value}, "b": None}), 1)
    assert one.fill_text(text) == data_line({"a": 1, "delta": {"content": text}, "b": None})
    two = Template(lambda n, value: frame("e", {"type": "e", "sequence_number": n, "delta": value}), 2)
    for number in (0, 7, 123456):
        expected = frame("e", {"type": "e", "sequence_number": number, "delta": text})
        assert two.fill_numbered(number, text) == expected


def test_a_template_whose_placeholder_is_missing_or_repeated_is_refused() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        Template(lambda value: data_line({"content": "fixed"}), 1)
    with pytest.raises(ValueError, match="exactly once"):
        Template(lambda value: data_line({"content": value, "again": value}), 1)


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_chunks_of_one_text_or_thought_equal_the_chunk_built_whole(include_usage: bool) -> None:
    chunks = ChatChunks(job(), {"stream_options": {"include_usage": include_usage}})
    for text in TEXTS[:1] + TEXTS[2:]:
        for delta in (Delta(text=text), Delta(reasoning=text)):
            fast = list(chunks.delta(delta))
            assert fast == list(chunks._chunks(delta)) and len(fast) == 1
            parsed = json.loads(fast[0].removeprefix("data: "))
            assert parsed["choices"][0]["delta"] == (
                {"content": text} if delta.text else {"reasoning_content": text}
            )
            assert ("usage" in parsed) is include_usage
    assert list(chunks.delta(Delta())) == []


def test_chat_chunks_of_mixed_deltas_go_the_general_way() -> None:
    chunks = ChatChunks(job(), {"stream_options": None})
    both = list(chunks.delta(Delta(text="a", reasoning="b")))
    assert json.loads(both[0][6:])["choices"][0]["delta"] == {"reasoning_content": "b", "content": "a"}
    call = ToolCallDelta(0, "call_1", "f", "{}")
    assert json.loads(list(chunks.delta(Delta(tool_call=call)))[0][6:])["choices"][0]["delta"]["tool_calls"]


def test_responses_stream_deltas_equal_the_events_built_whole() -> None:
    # The same deltas through the stream (templates after each item's first delta) and
    # through ResponseEvents framed one by one: the same text, the same numbering.
    the_job = job()
    deltas = [
        Delta(reasoning="think"),
        Delta(reasoning=" more"),
        *(Delta(text=text) for text in TEXTS if text),
        Delta(text="x", reasoning="y"),
        Delta(tool_call=ToolCallDelta(0, "call_1", "f", '{"a"')),
        Delta(text="after"),
    ]
    stream = ResponsesStream(the_job, {"thinking": "default"})
    reference = ResponseEvents(the_job, {"thinking": "default"})
    assert "".join(stream.open()) == "".join(frame(*e) for e in reference.open())
    for delta in deltas:
        assert "".join(stream.delta(delta)) == "".join(frame(*e) for e in reference.delta(delta))
    assert stream.events.sequence == reference.sequence
    assert {k: "".join(v.text) for k, v in stream.events.items.items()} == {
        k: "".join(v.text) for k, v in reference.items.items()
    }
