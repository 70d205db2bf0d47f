"""Textual pipelines: `canonicalize,cse,fuse{max-ops=32 verbose=true}`.

Passes are separated by commas; a pass's options go in braces as `key=value`
pairs separated by spaces or commas. Errors point at the column of the mistake.
"""
from __future__ import annotations

import re

from compiler.pass_manager.base import Pass
from compiler.pass_manager.registry import lookup_pass, suggest
from ir.errors import Location, PassError

#: names and option values; `/` lets a value be a file path (`tile{target=targets/my.yaml}`)
_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z0-9_./-]+)|(?P<punct>[{}=,])|(?P<end>$)|(?P<bad>\S))")


class _Scanner:
    def __init__(self, text: str, source: str):
        self.text, self.source = text, source
        self.tokens = self._tokenize()
        self.pos = 0

    def _tokenize(self) -> list[tuple[str, str, int]]:
        tokens, at = [], 0
        while True:
            match = _TOKEN.match(self.text, at)
            kind = match.lastgroup
            col = match.start(kind) + 1
            if kind == "bad":
                raise self.error(f"unexpected character '{match.group(kind)}'", col)
            tokens.append((kind, match.group(kind), col))
            if kind == "end":
                return tokens
            at = match.end()

    def error(self, message: str, col: int) -> PassError:
        return PassError(message, Location(self.source, 1, col), self.text)

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.pos]

    def take(self, expected: str) -> tuple[str, str, int]:
        kind, value, col = self.tokens[self.pos]
        if expected not in (kind, value):
            found = "end of pipeline" if kind == "end" else f"'{value}'"
            raise self.error(f"expected {expected} but found {found}", col)
        self.pos += 1
        return kind, value, col


def parse_pipeline(text: str, source: str = "<pipeline>") -> list[Pass]:
    """The configured passes of a pipeline text; PassError at the offending column."""
    scanner = _Scanner(text, source)
    passes: list[Pass] = []
    if scanner.peek()[0] == "end":
        return passes
    while True:
        passes.append(_pass(scanner))
        if scanner.peek()[0] == "end":
            return passes
        scanner.take(",")


def _pass(scanner: _Scanner) -> Pass:
    _, name, col = scanner.take("name")
    try:
        cls = lookup_pass(name)
    except PassError as err:
        raise scanner.error(err.message, col) from None
    values = {}
    if scanner.peek()[1] == "{":
        scanner.take("{")
        values = _options(scanner, cls)
        scanner.take("}")
    return cls(**values)


def _options(scanner: _Scanner, cls: type[Pass]) -> dict:
    declared = cls.options()
    values = {}
    while scanner.peek()[1] != "}":
        _, key, col = scanner.take("name")
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise scanner.error(f"pass '{cls.name}' has no option '{key}'{suggest(key, declared)} "
                                f"(options: {known})", col)
        scanner.take("=")
        _, text, value_col = scanner.take("name")
        try:
            values[declared[key].field] = declared[key].parse(text)
        except ValueError as err:
            raise scanner.error(str(err), value_col) from None
        if scanner.peek()[1] == ",":
            scanner.take(",")
    return values


def format_pipeline(passes: list[Pass]) -> str:
    """The pipeline text that rebuilds `passes`."""
    return ",".join(p.spec() for p in passes)
