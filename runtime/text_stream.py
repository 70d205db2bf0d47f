"""The text of generated tokens as it becomes final, cut at stop strings.

A completion is decoded as a whole each time a token arrives (so multi-byte
characters and merged pieces come out right) and its new text is released only
when no later token can change it: an unfinished UTF-8 character (U+FFFD at the
end) and a tail that may be the start of a stop string are held back. At a stop
string the text ends before it and the stream stops. The concatenated releases
equal the final text, which is what makes a streamed answer equal an unstreamed one.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from runtime.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of `ids`; ids beyond the tokenizer's vocabulary (a model's may be larger) show as <id>."""
    parts = []
    for known, run in groupby(ids, key=lambda i: 0 <= i < tokenizer.vocab_size):
        run = list(run)
        parts.append(tokenizer.decode(run) if known else "".join(f"<{i}>" for i in run))
    return "".join(parts)


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Where the earliest stop string begins in `text` (searching from `start`), or None."""
    hits = [i for stop in stops if stop and (i := text.find(stop, start)) >= 0]
    return min(hits) if hits else None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to its first stop string."""
    at = first_stop(text, stops)
    return text if at is None else text[:at]


class TextStream:
    """Token ids in, final text out (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.tokens: list[int] = []
        self.text = ""  # released so far
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; the text this releases (may be empty). Sets `stopped` at a stop string."""
        self.tokens.append(token)
        text = decode(self.tokenizer, self.tokens)
        at = first_stop(text, self.stops, len(self.text))
        if at is not None:
            self.stopped = True
            return self._release(text[:at])
        end = len(text.rstrip(REPLACEMENT))
        return self._release(text[:end - self._held(text[:end])])

    def flush(self) -> str:
        """At the end of generation: the text still held back."""
        if self.stopped:
            return ""
        return self._release(decode(self.tokenizer, self.tokens))

    def _held(self, text: str) -> int:
        """The length of the longest tail of `text` that begins some stop string."""
        return max((k for stop in self.stops for k in range(min(len(stop) - 1, len(text)), 0, -1)
                    if text.endswith(stop[:k])), default=0)

    def _release(self, text: str) -> str:
        new = text[len(self.text):] if len(text) > len(self.text) else ""
        self.text += new
        return new
