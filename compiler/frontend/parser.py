"""RDL text to a lark parse tree; syntax errors say what was expected and where."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import lark

from compiler.frontend.source import Source
from ir.errors import FrontendError, Location

#: How expected terminals read in messages (anonymous keyword terminals read as themselves).
_TERMINAL_NAMES = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "COMPARE": "a comparison", "$END": "end of input",
}


@lru_cache(maxsize=None)
def rdl_parser() -> lark.Lark:
    grammar = (Path(__file__).parent / "rdl.lark").read_text()
    return lark.Lark(grammar, parser="lalr", start=["start", "expr"], propagate_positions=True,
                     maybe_placeholders=True)


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    try:
        pattern = rdl_parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return f"'{pattern.value}'" if pattern.type == "str" else terminal.lower()


def _expected(err: lark.exceptions.UnexpectedInput) -> str:
    names = sorted({_describe(t) for t in (getattr(err, "expected", None) or getattr(err, "allowed", None) or ())})
    if not names:
        return ""
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"; expected {shown}"


def _found(err: lark.exceptions.UnexpectedInput, text: str) -> str:
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        return f"character {text[err.pos_in_stream]!r}"
    token = getattr(err, "token", None)
    if token is None or token.type == "$END":
        return "end of input"
    return f"'{token}'"


def _position(err: lark.exceptions.UnexpectedInput, text: str) -> tuple[int, int]:
    """Where the error is; for an unexpected end, just past the last visible character."""
    token = getattr(err, "token", None)
    at_end = isinstance(err, lark.exceptions.UnexpectedEOF) or getattr(token, "type", "") == "$END"
    if not at_end and err.line is not None and err.line >= 1:
        return err.line, max(err.column, 1)
    lines = text.rstrip().split("\n")
    return len(lines), len(lines[-1]) + 1


def parse_tree(source: Source, text: str | None = None, start: str = "start",
               origin: Location | None = None) -> lark.Tree:
    """The parse tree of `text` (default: the whole source); `origin` places embedded text."""
    text = source.text if text is None else text
    try:
        tree = rdl_parser().parse(text, start=start)
    except lark.exceptions.UnexpectedInput as err:
        line, col = _position(err, text)
        if origin is not None:
            line, col = origin.line, origin.col + col - 1
        message = f"syntax error: unexpected {_found(err, text)}{_expected(err)}"
        raise FrontendError(message, Location(source.filename, line, col), source.line(line)) from None
    _check_depth(tree, source, origin)
    return tree


#: the deepest nesting of statements and expressions a model may have (the zoo's is 14): the
#: lowering recurses along the parse tree
MAX_DEPTH = 100


def _check_depth(tree: lark.Tree, source: Source, origin: Location | None) -> None:
    """FrontendError at the first node nested deeper than MAX_DEPTH (walked without recursion)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            message = (f"nested too deeply: more than {MAX_DEPTH} levels of blocks, calls and operators "
                       "(split it with 'let')")
            raise source.error(message, node, origin)
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))
