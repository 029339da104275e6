"""ct2 adapter logic that needs no model: config keys, detokenising, stop strings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmpool.backends import registry
from llmpool.backends.ct2 import Ct2Adapter, IncrementalDecoder, StopScanner, cut_at_stop, sampling_kwargs
from llmpool.config.loader import load_settings
from llmpool.config.spec import ModelSpec
from llmpool.errors import ConfigError, ModelLoadFailed


def spec_of(write_settings: Callable[..., Path], tmp_path: Path, **keys: Any) -> ModelSpec:
    definition = {"backend": "ct2", "model_path": str(tmp_path), **keys}
    write_settings({"engine": {"models": {"c": definition}}})
    return load_settings().models["c"]


def test_registered() -> None:
    assert registry.get("ct2") is Ct2Adapter


def test_defaults(write_settings: Callable[..., Path], tmp_path: Path) -> None:
    spec = spec_of(write_settings, tmp_path)
    assert spec.options["device"] == "cpu"
    assert spec.options["compute_type"] == "int8"
    assert Ct2Adapter.max_tokens_limit(spec) == 2048
    caps = Ct2Adapter.capabilities(spec)
    assert caps.modalities == ("text",) and caps.multi_turn is False
    assert caps.thinking_modes == ("default",)


def test_keys_are_set(write_settings: Callable[..., Path], tmp_path: Path) -> None:
    spec = spec_of(
        write_settings,
        tmp_path,
        device="auto",
        compute_type="float32",
        ct2_intra_threads=2,
        ct2_max_length=512,
    )
    assert (spec.options["device"], spec.options["compute_type"]) == ("auto", "float32")
    assert spec.options["ct2_intra_threads"] == 2
    assert Ct2Adapter.max_tokens_limit(spec) == 512


@pytest.mark.parametrize(
    "keys",
    [
        {"device": "tpu"},
        {"compute_type": "int4"},
        {"ct2_max_length": "512"},
        {"ct2_max_length": 8},
        {"ct2_inter_threads": True},
        {"ct2_unknown": 1},
    ],
)
def test_bad_keys_are_refused(
    write_settings: Callable[..., Path], tmp_path: Path, keys: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError):
        spec_of(write_settings, tmp_path, **keys)


def test_constraints() -> None:
    by_key = {c.key: c for c in Ct2Adapter.constraints}
    assert by_key["compute_type"].problem("int8") is None
    assert by_key["compute_type"].problem("int3")
    assert by_key["ct2_max_length"].problem(8)


def test_load_without_tokenizer_fails_clearly(write_settings: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadFailed, match="tokenizer.json"):
        Ct2Adapter(spec_of(write_settings, tmp_path), 0).load()


def test_close_unloaded_is_a_no_op(write_settings: Callable[..., Path], tmp_path: Path) -> None:
    adapter = Ct2Adapter(spec_of(write_settings, tmp_path), 0)
    adapter.close()
    adapter.close()


# -- incremental detokenising -------------------------------------------------------
# A byte-level vocabulary: each id is a few bytes; decoding joins them and replaces
# an incomplete UTF-8 sequence with U+FFFD, as byte-level BPE decoders do.
BYTES = {
    1: b"Caf",
    2: "é".encode()[:1],
    3: "é".encode()[1:],
    4: b" ",
    5: "€".encode()[:2],
    6: "€".encode()[2:],
}


def fake_decode(ids: list[int]) -> str:
    return b"".join(BYTES[i] for i in ids).decode("utf-8", "replace")


def test_decoder_never_splits_a_character() -> None:
    decoder = IncrementalDecoder(fake_decode)
    deltas = [decoder.push(i) for i in (1, 2, 3, 4, 5, 6, 1)]
    assert deltas == ["Caf", "", "é", " ", "", "€", "Caf"]
    assert "".join(deltas) == fake_decode(decoder.ids)


def test_decoder_on_a_real_style_vocabulary() -> None:
    words = {10: "Hello", 11: ",", 12: " world", 13: "!"}
    decoder = IncrementalDecoder(lambda ids: "".join(words[i] for i in ids))
    assert [decoder.push(i) for i in (10, 11, 12, 13)] == ["Hello", ",", " world", "!"]


# -- stop strings ---------------------------------------------------------------------
def feed_all(scanner: StopScanner, deltas: list[str]) -> tuple[str, bool]:
    out = []
    for delta in deltas:
        text, stopped = scanner.feed(delta)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + scanner.flush(), False


def test_stop_split_over_deltas_is_held_back() -> None:
    scanner = StopScanner(["###"])
    assert scanner.feed("Paris #") == ("Paris ", False)
    assert scanner.feed("#") == ("", False)
    assert scanner.feed("# rest") == ("", True)


def test_false_alarm_is_released() -> None:
    assert feed_all(StopScanner(["###"]), ["a #", "# b", " c"]) == ("a ## b c", False)


def test_held_back_prefix_is_flushed_at_the_end() -> None:
    assert feed_all(StopScanner(["END"]), ["the E", "N"]) == ("the EN", False)


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopScanner(["world", "lo"]), ["hel", "lo world"]) == ("hel", True)


def test_no_stops_passes_through() -> None:
    assert StopScanner([]).feed("abc") == ("abc", False)


def test_cut_at_stop() -> None:
    assert cut_at_stop("one\ntwo", ["\n"]) == ("one", True)
    assert cut_at_stop("one", ["\n", ""]) == ("one", False)


def test_sampling_kwargs() -> None:
    assert sampling_kwargs(0.0, 40, 0.9, 1.1) == {"sampling_topk": 1, "repetition_penalty": 1.1}
    assert sampling_kwargs(0.7, 0, 0.9, 1.0)["sampling_topk"] == 0
    assert sampling_kwargs(0.7, 40, 0.9, 1.0)["sampling_temperature"] == 0.7
