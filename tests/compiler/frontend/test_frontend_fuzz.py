"""Mutated zoo sources: the frontend either lowers a valid graph or raises a located user error."""
from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import zoo
from compiler.frontend import Source, build
from ir.errors import ConfigError, FrontendError
from ir.verifier import verify

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\d+\.\d*|\w+|\*\*|//|[=!<>]=|[^\w\s]|\s+')
SOURCES = {name: zoo.source(name) for name in zoo.names()}
TOKENS = {name: _TOKEN.findall(src.text) for name, src in SOURCES.items()}
EXTRA = ["(", ")", "{", "}", "[", "]", ",", ":", ".", "=", "-", "*", "@", "**", "let", "def", "for", "in", "if",
         "else", "return", "scope", "param", "input", "output", "train", "0", "1", "-1", "2.5", '"x"', "x", "none"]


def identifiers(tokens: list[str]) -> list[int]:
    return [i for i, t in enumerate(tokens) if re.fullmatch(r"[A-Za-z_]\w*", t)]


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SOURCES)))
    tokens = list(TOKENS[name])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "insert", "rename", "swap"]))
        at = draw(st.integers(0, len(tokens) - 1))
        if kind == "delete":
            del tokens[at]
        elif kind == "insert":
            tokens.insert(at, " " + draw(st.sampled_from(EXTRA + tokens)) + " ")
        elif kind == "rename":
            at = draw(st.sampled_from(identifiers(tokens)))
            tokens[at] = draw(st.sampled_from([tokens[i] for i in identifiers(tokens)] + ["zz", "f32", "inf"]))
        else:
            other = draw(st.integers(0, len(tokens) - 1))
            tokens[at], tokens[other] = tokens[other], tokens[at]
    return Source("".join(tokens), SOURCES[name].filename), draw(st.booleans())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_lower_or_raise_a_located_error(case):
    source, training = case
    try:
        graph = build(source, training=training)
    except (FrontendError, ConfigError) as err:
        assert err.location is not None, str(err)
        assert err.location.file == source.filename and err.location.line >= 1 and err.location.col >= 1
        assert err.render().startswith(f"{err.location}: error: ")
        return
    verify(graph)
