"""RDL source text: where a node stands, and errors that point at it."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable

import attrs
import lark

from ir.errors import FrontendError, Location


@attrs.frozen
class Source:
    """A model's text and the file name its locations use."""

    text: str
    filename: str

    @classmethod
    def read(cls, path: str | Path) -> Source:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise FrontendError(f"cannot read model file '{path}': {getattr(err, 'strerror', None) or err}") from None
        return cls(text, str(path))

    def line(self, number: int) -> str | None:
        lines = self.text.splitlines()
        return lines[number - 1] if 0 < number <= len(lines) else None

    def location(self, node: lark.Tree | lark.Token | None) -> Location | None:
        """The `file:line:col` of a parse-tree node or token."""
        if isinstance(node, lark.Token) and node.line is not None:
            return Location(self.filename, node.line, node.column)
        if isinstance(node, lark.Tree) and not node.meta.empty:
            return Location(self.filename, node.meta.line, node.meta.column)
        return None

    def error(self, message: str, node=None, location: Location | None = None) -> FrontendError:
        """A `FrontendError` at `node` (or `location`) with its source line for the caret."""
        where = location or self.location(node)
        context = self.line(where.line) if where and where.file == self.filename else None
        return FrontendError(message, where, context)


def suggest(name: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'a', 'b'?)` when some candidates are close to `name`, else ''."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
