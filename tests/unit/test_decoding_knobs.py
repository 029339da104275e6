"""Decoding knobs a runtime may lack (SPEC §11: refused, never ignored): which fields a
request set, as the client named them, and which of those a runtime would ignore."""

from __future__ import annotations

from llmpool.generation import KNOBS, Decoding

DEFAULTS = Decoding(top_k=40, beam_size=4)  # an operator's engine.decoding, beams included


def test_a_request_notes_the_knobs_it_set_under_the_clients_names() -> None:
    d = DEFAULTS.requested({"top_k": 5, "temperature": 0.2, "repetition_penalty": None}, within="decoding.")
    assert (d.top_k, d.temperature, d.repetition_penalty, d.beam_size) == (5, 0.2, 1.0, 4)
    assert d.sent == (("top_k", "decoding.top_k"),)  # temperature is no knob; None is unset
    assert DEFAULTS.requested({"top_k": 5}).sent == (("top_k", "top_k"),)


def test_only_a_knob_the_request_set_above_off_is_unhonoured() -> None:
    assert DEFAULTS.unhonoured(()) is None  # the operator's defaults are no request
    assert DEFAULTS.requested({}).unhonoured(()) is None
    off = DEFAULTS.requested(dict(KNOBS))
    assert off.unhonoured(()) is None  # each knob at the value that leaves it off
    sent = DEFAULTS.requested({"top_k": 5, "beam_size": 2})
    assert sent.unhonoured(()) == ("top_k", "top_k")
    assert sent.unhonoured(("top_k",)) == ("beam_size", "beam_size")
    assert sent.unhonoured(("top_k", "beam_size")) is None


def test_sent_is_not_a_setting() -> None:
    d = DEFAULTS.requested({"top_k": 5})
    assert d == Decoding(top_k=5, beam_size=4)  # equal settings, whoever set them
    assert "sent" not in d.values() and d.values()["top_k"] == 5
