"""JSON text from a user's files: nesting too deep for Python's parser is a JSONDecodeError at its place.

`json.loads` recurses once per level and raises RecursionError on a deep enough
document (100000 nested brackets); `loads` turns that into the JSONDecodeError every
caller already reports with its file, line and column.
"""
from __future__ import annotations

import json
import re
from typing import Any

#: the nesting reported as too deep, once the parser has given up (real files nest a few levels)
MAX_DEPTH = 100
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def loads(text: str) -> Any:
    """`json.loads(text)`; JSONDecodeError (not RecursionError) for a document nested too deeply."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError(f"nested more than {MAX_DEPTH} levels deep", text, _too_deep(text)) from None


def _too_deep(text: str) -> int:
    """Where the nesting first exceeds MAX_DEPTH (brackets inside strings do not count)."""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif token in "]}":
            depth -= 1
    return 0
