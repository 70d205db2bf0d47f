"""Each parser error: its message, its file:line:col, and the source line with a caret."""
from __future__ import annotations

import pytest

from ir.errors import ParseError
from ir.parser import parse, parse_with_positions

GOOD = """graph @g {
  input %x : f32[2,3]
  param @w : f32[3] = normal(std=0.02)
  %0 = add(%x, @w) : f32[2,3]
  output y = %0
}
"""


def error(text: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text, "m.ir")
    return info.value


def test_the_good_graph_parses():
    assert [op.name for op in parse(GOOD).ops] == ["add"]


CASES = [
    # (id, old text, new text, message, line, col)
    ("syntax-missing-comma", "add(%x, @w)", "add(%x @w)", "unexpected '@w'; expected ',', ')'", 4, 15),
    ("syntax-bad-character", "add(%x, @w)", "add($x, @w)", "unexpected '$'; expected global, local, ')'", 4, 12),
    ("syntax-type-brackets", "f32[2,3]\n  output", "f32(2,3)\n  output", "unexpected '('; expected '['", 4, 25),
    ("syntax-unknown-role", "  input %x", "  weight @v : f32[1] = zeros\n  input %x",
     "unexpected 'weight'; expected '^', 'input', local, 'output', '}', role, 'update'", 2, 3),
    ("syntax-end-of-input", "  output y = %0\n}\n", "  output y = %0\n",
     "unexpected end of input; expected '^', local, 'output', '}', 'update'", 5, 16),
    ("undefined-value", "add(%x, @w)", "add(%x, %q)", "use of undefined value %q", 4, 16),
    ("undefined-output", "output y = %0", "output y = %7", "use of undefined value %7", 5, 14),
    ("use-before-definition", "  %0 = add(%x, @w) : f32[2,3]",
     "  %0 = neg(%1) : f32[2,3]\n  %1 = neg(%x) : f32[2,3]", "use of undefined value %1", 4, 12),
    ("value-defined-twice", "  output y", "  %0 = neg(%x) : f32[2,3]\n  output y", "value %0 defined twice", 5, 3),
    ("input-declared-twice", "  param @w", "  input %x : f32[1]\n  param @w", "value %x defined twice", 3, 9),
    ("output-defined-twice", "output y = %0\n", "output y = %0\n  output y = %x\n", "output 'y' defined twice", 6, 10),
    ("update-given-twice", "output y = %0\n", "update @w = @w\n  update @w = @w\n", "update of @w given twice", 6, 10),
    ("unknown-op", "add(", "ad(", "unknown op 'ad' (did you mean 'pad', 'add'?)", 4, 8),
    ("unknown-op-no-suggestion", "add(", "qqq(", "unknown op 'qqq'", 4, 8),
    ("unknown-attribute", "add(%x, @w)", "add(%x, @w) {axis = 1}", "'add': unknown attribute 'axis' (expected: none)",
     4, 21),
    ("attribute-kind", "add(%x, @w) : f32[2,3]", "sum(%x) {keepdims = 3} : f32[]",
     "'sum': attribute 'keepdims' expects bool, got 3", 4, 17),
    ("attribute-choice", "add(%x, @w)", 'gelu(%x) {approximate = "erf"}',
     "'gelu': attribute 'approximate' must be one of tanh, none, got 'erf'", 4, 18),
    ("attribute-missing", "add(%x, @w)", "cast(%x) {}", "'cast': missing attribute 'dtype'", 4, 17),
    ("attribute-twice", "add(%x, @w) : f32[2,3]", "sum(%x) {keepdims = true, keepdims = false} : f32[]",
     "attribute 'keepdims' given twice", 4, 34),
    ("attribute-bad-dtype", "add(%x, @w)", "cast(%x) {dtype = f64}", "'cast': attribute 'dtype' expects dtype, got 'f64'",
     4, 18),
    ("unknown-dtype", "f32[3] = normal", "f64[3] = normal",
     "unknown dtype 'f64' (expected one of f32, bf16, f16, i32, i64, bool, q8_0, q4_0, q4_1)", 3, 14),
    ("unknown-dtype-in-op", ": f32[2,3]\n  output", ": float[2,3]\n  output",
     "unknown dtype 'float' (expected one of f32, bf16, f16, i32, i64, bool, q8_0, q4_0, q4_1)", 4, 22),
    ("unknown-initializer", "normal(std=0.02)", "gaussian(std=0.02)",
     "unknown initializer 'gaussian' (expected one of zeros, ones, constant, normal, uniform, xavier_uniform, "
     "xavier_normal, glorot_uniform, glorot_normal, kaiming_uniform)", 3, 23),
    ("initializer-argument", "normal(std=0.02)", "normal(sigma=0.02)",
     "bad arguments to initializer 'normal': no argument 'sigma' (expected: mean, std)", 3, 23),
    ("initializer-value", "normal(std=0.02)", "normal(std=-1.0)", "bad arguments to initializer 'normal': scale < 0",
     3, 23),
    ("initializer-choice", "normal(std=0.02)", 'kaiming_uniform(fan="both")',
     "bad arguments to initializer 'kaiming_uniform': fan must be 'in' or 'out', got 'both'", 3, 23),
    ("more-results-than-types", "%0 = add", "%0, %1 = add", "2 result name(s) but 1 type(s)", 4, 3),
    ("more-types-than-results", "f32[2,3]\n  output", "f32[2,3], f32[2,3]\n  output", "1 result name(s) but 2 type(s)",
     4, 3),
    ("unknown-phase", "  %0 =", "^forward:\n  %0 =", "unknown phase 'forward' (expected fwd, bwd, gradnorm, opt or untagged)",
     4, 2),
]


@pytest.mark.parametrize("old,new,message,line,col", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_error(old, new, message, line, col):
    assert old in GOOD
    err = error(GOOD.replace(old, new, 1))
    assert err.message == message
    assert str(err.location) == f"m.ir:{line}:{col}"
    source = GOOD.replace(old, new, 1).splitlines()
    assert err.context == source[line - 1]


def test_render_shows_the_line_and_a_caret():
    err = error(GOOD.replace("add(%x, @w)", "add(%x, %q)"))
    assert err.render() == ("m.ir:4:16: error: use of undefined value %q\n"
                            "  %0 = add(%x, %q) : f32[2,3]\n"
                            "               ^")


def test_region_values_are_isolated_from_the_graph():
    text = GOOD.replace("  %0 = add(%x, @w) : f32[2,3]", """  %0 = fused(%x) : f32[2,3] {
  ^(%1: f32[2,3]):
    %2 = add(%1, %x) : f32[2,3]
    yield %2
  }""")
    err = error(text)
    assert err.message == "use of undefined value %x"
    assert str(err.location) == "m.ir:6:18"


def test_region_values_are_not_visible_after_the_region():
    text = GOOD.replace("  %0 = add(%x, @w) : f32[2,3]\n  output y = %0", """  %0 = fused(%x) : f32[2,3] {
  ^(%1: f32[2,3]):
    yield %1
  }
  output y = %1""")
    err = error(text)
    assert (err.message, str(err.location)) == ("use of undefined value %1", "m.ir:8:14")


def test_region_yield_of_an_undefined_value():
    text = GOOD.replace("  %0 = add(%x, @w) : f32[2,3]", """  %0 = fused(%x) : f32[2,3] {
  ^(%1: f32[2,3]):
    yield %5
  }""")
    err = error(text)
    assert (err.message, str(err.location)) == ("use of undefined value %5", "m.ir:6:11")


def test_empty_input():
    err = error("")
    assert err.message == "unexpected end of input; expected 'graph'"
    assert str(err.location) == "m.ir:1:1"


def test_positions_locate_ops_declarations_outputs_and_updates():
    graph, positions = parse_with_positions(GOOD.replace("output y = %0\n", "output y = %0\n  update @w = @w\n"),
                                            "p.ir")
    assert str(positions[graph.ops[0]]) == "p.ir:4:8"
    assert str(positions[graph.inputs[0]]) == "p.ir:2:9"
    assert str(positions[graph.params[0].value]) == "p.ir:3:9"
    assert str(positions[("output", "y")]) == "p.ir:5:10"
    assert str(positions[("update", "w")]) == "p.ir:6:10"


def _nested_fused(depth: int) -> str:
    """`depth` fused ops, each one's region holding the next."""
    inner = "    %r = neg(%a) : f32[2]\n    yield %r\n"
    for i in range(depth):
        inner = f"  %f{i} = fused(%a) {{label = \"x\"}} : f32[2] {{\n  ^(%a: f32[2]):\n{inner}  }}\n  yield %f{i}\n"
    return "graph @g {\n  input %a : f32[2]\n" + inner.rsplit("  yield", 1)[0] + f"  output y = %f{depth - 1}\n}}\n"


def test_1000_nested_regions_are_a_one_line_error():
    err = error(_nested_fused(1000))
    assert "nested too deeply: more than 64 levels" in err.message
    assert err.location.file == "m.ir" and err.location.line > 3


def test_30_nested_regions_still_parse():
    graph = parse(_nested_fused(30))
    assert [op.name for op in graph.ops] == ["fused"]


@pytest.mark.parametrize("text, col", [
    (GOOD.replace("f32[2,3]", f"f32[2,{'9' * 5000}]", 1), 20),
    (GOOD.replace("f32[2,3]", "f32[2,123456789012345678901]", 1), 20),
], ids=["5000-digit-dimension", "21-digit-dimension"])
def test_a_dimension_beyond_64_bits_is_a_one_line_error(text, col):
    err = error(text)
    assert "digits is too large (beyond 64 bits)" in err.message
    assert (err.location.line, err.location.col) == (2, col)
