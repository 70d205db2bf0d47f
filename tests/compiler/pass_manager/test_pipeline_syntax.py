"""Textual pipelines: parsing, options, errors with columns, and printing back."""
from __future__ import annotations

import dataclasses

import attrs
import pytest

from compiler.passes import Pass, PassManager, format_pipeline, option, parse_pipeline, register_pass
from compiler.pass_manager.registry import PASSES
from compiler.pass_manager.levels import PIPELINES, level_pipeline
from ir.errors import PassError


@register_pass
@attrs.frozen
class Knobs(Pass):
    """A pass with one option of each type (test only)."""

    name = "test-knobs"
    count: int = option(3, "an int")
    ratio: float = option(0.5, "a float")
    strict: bool = option(False, "a bool")
    label: str = option("x", "a string")

    def run(self, graph, ctx):
        return graph


@register_pass
@dataclasses.dataclass(frozen=True)
class Plain(Pass):
    """A dataclass pass (test only)."""

    name = "test-plain"
    max_ops: int = 32

    def run(self, graph, ctx):
        return graph


def test_options_are_typed_fields():
    (knobs,) = parse_pipeline("test-knobs{count=7 ratio=0.25, strict=true label=abc}")
    assert knobs == Knobs(count=7, ratio=0.25, strict=True, label="abc")
    assert list(Knobs.options()) == ["count", "ratio", "strict", "label"]
    assert Knobs.options()["ratio"].help == "a float"


def test_dataclass_passes_and_dashed_option_names():
    (plain,) = parse_pipeline("test-plain{max-ops=8}")
    assert plain == Plain(max_ops=8)
    assert plain.spec() == "test-plain{max-ops=8}"


def test_pipeline_round_trips_through_text():
    text = " canonicalize , test-knobs{strict=1} ,cse,fold-constants{max-elements=16}"
    passes = parse_pipeline(text)
    assert format_pipeline(passes) == "canonicalize,test-knobs{strict=true},cse,fold-constants{max-elements=16}"
    assert parse_pipeline(format_pipeline(passes)) == passes


def test_empty_pipeline():
    assert parse_pipeline("") == [] and parse_pipeline("  ") == []


@pytest.mark.parametrize("text, col, message", [
    ("cse,canonicalise", 5, "unknown pass 'canonicalise' (did you mean 'canonicalize'?)"),
    ("test-knobs{cuont=1}", 12, "has no option 'cuont' (did you mean 'count'?)"),
    ("test-knobs{count=1.5}", 18, "option 'count' expects int, got '1.5'"),
    ("test-knobs{strict=maybe}", 19, "option 'strict' expects true or false, got 'maybe'"),
    ("cse{", 5, "expected name but found end of pipeline"),
    ("cse dce", 5, "expected , but found 'dce'"),
    ("cse;dce", 4, "unexpected character ';'"),
])
def test_pipeline_errors_name_the_column(text, col, message):
    with pytest.raises(PassError) as info:
        parse_pipeline(text)
    err = info.value
    assert message in err.message
    assert (err.location.line, err.location.col) == (1, col)
    assert err.render().splitlines()[1:] == [text, " " * (col - 1) + "^"]


def test_levels_are_pipelines_of_registered_passes():
    assert level_pipeline("O0") == "decompose,plan-memory{onchip-max-bytes=0}"
    assert level_pipeline("O1") == "canonicalize,fold-constants,cse,dce,decompose,canonicalize,cse,dce,fuse,plan-memory"
    for level in PIPELINES:
        assert [p.spec() for p in PassManager.parse(level_pipeline(level)).passes] == PIPELINES[level]


def test_registering_a_second_pass_under_a_taken_name_fails():
    @attrs.frozen
    class Other(Pass):
        """Clashes."""

        name = "cse"

    with pytest.raises(PassError, match="already registered"):
        register_pass(Other)
    assert PASSES["cse"].__module__ == "compiler.passes.cse"


def test_option_types_are_checked_at_registration():
    @attrs.frozen
    class Listy(Pass):
        """Bad option type."""

        name = "test-listy"
        sizes: list = attrs.field(factory=list)

    with pytest.raises(PassError, match="must be int, float, bool or str"):
        register_pass(Listy)
