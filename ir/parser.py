"""Read the IR text form back into a `Graph`. Errors name `file:line:col`."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import lark

from ir.builder import unknown_op_message
from ir.dtypes import DType
from ir.errors import Location, ParseError
from ir.graph import Graph, Op, Param, Phase, Placement, Region, Role, Value
from ir.init import Init
from ir.ops import REGISTRY, TypeRuleError, lookup
from ir.types import TensorType


@lru_cache(maxsize=None)
def _lark() -> lark.Lark:
    grammar = (Path(__file__).parent / "ir.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _describe_expected(expected: set[str]) -> str:
    names = []
    for name in sorted(expected):
        try:
            pattern = _lark().get_terminal(name).pattern
            names.append(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
        except KeyError:
            names.append(name.lower())
    return ", ".join(names)


class _Reader:
    """Walks the parse tree, resolving names in (isolated) scopes."""

    def __init__(self, text: str, filename: str):
        self.lines = text.splitlines()
        self.filename = filename
        self.positions: dict[object, Location] = {}

    def error(self, message: str, node) -> ParseError:
        where = node.meta if isinstance(node, lark.Tree) else node
        line, col = where.line, where.column
        context = self.lines[line - 1] if 0 < line <= len(self.lines) else None
        return ParseError(message, Location(self.filename, line, col), context)

    def graph(self, tree: lark.Tree) -> Graph:
        name_token, *items = tree.children
        graph = Graph(name_token[1:])
        scope: dict[str, Value] = {}
        phase = None
        for item in items:
            kind = item.data
            if kind == "input_decl":
                name, type_node, *mem = item.children
                value = Value(self.type(type_node), name=name[1:], mem=self.placements(mem, 1)[0])
                self.define(scope, name, value)
                self.located(value, name)
                graph.inputs.append(value)
            elif kind == "param_decl":
                role, name, type_node, init, *mem = item.children
                value = Value(self.type(type_node), name=name[1:], mem=self.placements(mem, 1)[0])
                self.define(scope, name, value)
                self.located(value, name)
                graph.params.append(Param(value, self.init(init), Role(str(role))))
            elif kind == "label":
                phase = self.phase(item.children[0])
            elif kind == "op":
                graph.ops.append(self.op(item, scope, phase))
            elif kind == "output":
                name, ref = item.children
                if str(name) in graph.outputs:
                    raise self.error(f"output '{name}' defined twice", name)
                graph.outputs[str(name)] = self.ref(ref, scope)
                self.located(("output", str(name)), name)
            else:
                name, ref = item.children
                if name[1:] in graph.updates:
                    raise self.error(f"update of {name} given twice", name)
                graph.updates[name[1:]] = self.ref(ref, scope)
                self.located(("update", name[1:]), name)
        return graph

    def located(self, key, token) -> None:
        self.positions[key] = Location(self.filename, token.line, token.column)

    def phase(self, token) -> Phase | None:
        if token == "untagged":
            return None
        try:
            return Phase(str(token))
        except ValueError:
            raise self.error(f"unknown phase '{token}' (expected fwd, bwd, gradnorm, opt or untagged)", token) from None

    def define(self, scope: dict[str, Value], token, value: Value) -> None:
        if str(token) in scope:
            raise self.error(f"value {token} defined twice", token)
        scope[str(token)] = value

    def ref(self, tree: lark.Tree, scope: dict[str, Value]) -> Value:
        token = tree.children[0]
        if str(token) not in scope:
            raise self.error(f"use of undefined value {token}", token)
        return scope[str(token)]

    def type(self, tree: lark.Tree) -> TensorType:
        dtype_token, *dims = tree.children
        try:
            dtype = DType.parse(str(dtype_token))
        except ValueError as err:
            raise self.error(str(err), dtype_token) from None
        return TensorType(tuple(self.integer(d) for d in dims if d is not None), dtype)

    def op(self, tree: lark.Tree, scope: dict[str, Value], phase) -> Op:
        children = tree.children
        results = [c for c in children if isinstance(c, lark.Token) and c.type == "LOCAL"]
        name = next(c for c in children if isinstance(c, lark.Token) and c.type == "NAME")
        subtrees = [c for c in children if isinstance(c, lark.Tree)]
        operands = [self.ref(t, scope) for t in subtrees if t.data == "ref"]
        types = [self.type(t) for t in subtrees if t.data == "type"]
        attrs_node = next((t for t in subtrees if t.data == "attrs"), None)
        loc_node = next((t for t in subtrees if t.data == "loc"), None)
        region_node = next((t for t in subtrees if t.data == "region"), None)
        mem_node = next((t for t in subtrees if t.data == "mem"), None)
        if str(name) not in REGISTRY:
            raise self.error(unknown_op_message(str(name)), name)
        if len(results) != len(types):
            raise self.error(f"{len(results)} result name(s) but {len(types)} type(s)", results[0])
        op = Op(str(name), operands, self.attrs(attrs_node, name), phase=phase,
                locs=self.locs(loc_node) if loc_node else ())
        if region_node is not None:
            op.region = self.region(region_node)
        places = self.placements([mem_node] if mem_node else [], len(types))
        op.results = [Value(t, op, i, mem=m) for i, (t, m) in enumerate(zip(types, places))]
        for token, value in zip(results, op.results):
            self.define(scope, token, value)
        self.positions[op] = Location(self.filename, name.line, name.column)
        return op

    def region(self, tree: lark.Tree) -> Region:
        scope: dict[str, Value] = {}
        region = Region([])
        for child in tree.children:
            if child is None:
                continue
            if child.data == "region_arg":
                token, type_node = child.children
                value = Value(self.type(type_node))
                self.define(scope, token, value)
                region.args.append(value)
            elif child.data == "op":
                region.ops.append(self.op(child, scope, None))
            else:
                region.results.append(self.ref(child, scope))
        return region

    def attrs(self, tree: lark.Tree | None, op_name) -> dict:
        given = self.attr_dict(tree)
        try:
            return lookup(str(op_name)).check_attrs(given)
        except TypeRuleError as err:
            keys = [a.children[0] for a in (tree.children if tree else []) if a is not None]
            named = next((k for k in keys if f"attribute '{k}'" in str(err)), None)
            raise self.error(f"'{op_name}': {err}", named or tree or op_name) from None

    def attr_dict(self, tree: lark.Tree | None) -> dict:
        if tree is None:
            return {}
        out = {}
        for attr in tree.children:
            if attr is None:
                continue
            key, value = attr.children
            if str(key) in out:
                raise self.error(f"attribute '{key}' given twice", key)
            out[str(key)] = self.literal(value)
        return out

    def literal(self, tree: lark.Tree):
        (first, *_) = tree.children or [None]
        if tree.data == "list":
            return tuple(self.literal(c) for c in tree.children if c is not None)
        if tree.data == "string":
            return json.loads(first)
        if tree.data == "word":
            return {"true": True, "false": False, "none": None}.get(str(first), str(first))
        text = str(first)
        is_float = any(c in text for c in ".eEn") or "inf" in text
        return float(text) if is_float else self.integer(first)

    def integer(self, token) -> int:
        """An integer token's value; ParseError for one beyond 64 bits (a 5000-digit one too)."""
        digits = str(token).lstrip("+-").lstrip("0")
        if len(digits) > 20 or abs(int(token)) >= 2**64:
            raise self.error(f"integer of {len(digits)} digits is too large (beyond 64 bits)", token)
        return int(token)

    def init(self, tree: lark.Tree) -> Init:
        kind, *args = tree.children
        try:
            return Init(str(kind), self.attr_dict(lark.Tree("attrs", args)))
        except ValueError as err:
            raise self.error(str(err), kind) from None

    def locs(self, tree: lark.Tree) -> tuple[Location, ...]:
        return tuple(Location(json.loads(f), self.integer(l), self.integer(c)) for f, l, c in (n.children for n in tree.children))

    def placements(self, mem: list[lark.Tree], count: int) -> list[Placement | None]:
        """The placements of a `mem(...)` (a list holding its node, or empty): one per value."""
        if not mem:
            return [None] * count
        entries = mem[0].children
        if len(entries) != count:
            raise self.error(f"{len(entries)} memory placement(s) for {count} value(s)", entries[0].children[0])
        return [self.placement(*entry.children) for entry in entries]

    def placement(self, tier, offset) -> Placement | None:
        if offset is not None:
            return Placement(str(tier), self.integer(offset))
        if tier != "none":
            raise self.error(f"memory placement '{tier}' needs an offset ('{tier}:OFFSET') or is 'none'", tier)
        return None


def parse_with_positions(text: str, filename: str = "<string>") -> tuple[Graph, dict[object, Location]]:
    """The graph and where each part stands in the text: keyed by op, by declared input or
    param `Value`, and by `("output", name)` / `("update", param name)`."""
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as err:
        reader = _Reader(text, filename)
        parser = getattr(err, "interactive_parser", None)
        expected = (parser.accepts() - {"$END"} if parser else None) or getattr(err, "expected", None) \
            or getattr(err, "allowed", None) or set()
        found = getattr(err, "token", None)
        if isinstance(err, lark.exceptions.UnexpectedCharacters):
            found = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "end of input"
        what = "end of input" if found is None or getattr(found, "type", "") == "$END" else f"'{found}'"
        message = f"unexpected {what}" + (f"; expected {_describe_expected(expected)}" if expected else "")
        node = lark.Token("X", "", line=max(err.line, 1), column=max(err.column, 1))
        if what == "end of input":  # just past the last character
            body = text.rstrip()
            node = lark.Token("X", "", line=body.count("\n") + 1, column=len(body) - body.rfind("\n"))
        raise reader.error(message, node) from None
    reader = _Reader(text, filename)
    _check_depth(tree, reader)
    graph = reader.graph(tree)
    return graph, reader.positions


#: the deepest parse tree the reader takes: about 30 nested regions (passes recurse along them)
MAX_DEPTH = 64


def _check_depth(tree: lark.Tree, reader: _Reader) -> None:
    """ParseError at the first node nested deeper than MAX_DEPTH (walked without recursion)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise reader.error(f"nested too deeply: more than {MAX_DEPTH} levels of regions, attributes and lists", node)
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))


def parse(text: str, filename: str = "<string>") -> Graph:
    """A graph from its text form (not yet verified: call `ir.verifier.verify`)."""
    return parse_with_positions(text, filename)[0]
