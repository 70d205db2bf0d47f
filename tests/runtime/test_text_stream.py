"""Streamed text: released only when final, cut at stop strings, equal to the whole text."""
from __future__ import annotations

from runtime.text_stream import TextStream, cut_at_stop, decode
from runtime.tokenizer import ByteTokenizer

BYTES = ByteTokenizer()


def releases(stream: TextStream, text: bytes | list[int]) -> list[str]:
    out = []
    for token in text:
        out.append(stream.push(token))
        if stream.stopped:
            break
    return out + [stream.flush()]


def test_a_multibyte_character_is_held_until_complete():
    assert releases(TextStream(BYTES), "aé!".encode()) == ["a", "", "é", "!", ""]


def test_a_possible_stop_string_start_is_held_then_released():
    stream = TextStream(BYTES, ["STOP"])
    assert releases(stream, b"xSTx") == ["x", "", "", "STx", ""]
    assert not stream.stopped and stream.text == "xSTx"


def test_a_stop_string_across_tokens_ends_the_text_before_it():
    stream = TextStream(BYTES, ["@@", "STOP"])
    assert "".join(releases(stream, b"abSTOPcd")) == "ab" and stream.stopped
    assert stream.text == cut_at_stop("abSTOPcd", ["@@", "STOP"]) == "ab"


def test_special_ids_are_skipped_and_unknown_ids_shown():
    assert decode(BYTES, [104, 105, 256, 104]) == "hih"
    assert decode(BYTES, [104, 300, 301, 105]) == "h<300><301>i"
    assert "".join(releases(TextStream(BYTES), [104, 300, 105])) == "h<300>i"
