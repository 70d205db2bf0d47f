"""User mistakes in RDL sources and configs: `file:line:col: error: message`, the line, a caret."""
from __future__ import annotations

import pytest

from compiler.config import parse_overrides
from compiler.frontend import Source, build
from ir.errors import ConfigError, FrontendError

HEAD = "config { n: int = 4 }\ninput x: f32[2, n]\n"  # lines 1-2 of most cases

# (case id, source, expected message part, line, column)
CASES = [
    ("syntax-eof", HEAD + "let a = ", "syntax error: unexpected end of input; expected", 3, 8),
    ("syntax-token", HEAD + "let a = (1 + 2\noutput y = x", "syntax error: unexpected 'output'; expected", 4, 1),
    ("syntax-char", HEAD + "let a = 1 $ 2", "syntax error: unexpected character '$'", 3, 11),
    ("syntax-missing-name", HEAD + "let = 1", "syntax error: unexpected '='; expected '(', a name", 3, 5),
    ("undefined-name", HEAD + "output y = x + z", "undefined name 'z'", 3, 16),
    ("undefined-suggests", HEAD + "output y = relu(xx)", "undefined name 'xx' (did you mean 'x'", 3, 17),
    ("unknown-op-suggests", HEAD + "output y = sofmax(x)", "unknown op or function 'sofmax' (did you mean 'softmax'", 3, 12),
    ("op-arity", HEAD + "output y = relu(x, x)", "'relu': expects 1 operand(s), got 2", 3, 12),
    ("op-unknown-attribute", HEAD + "output y = softmax(x, axes=1)", "unknown attribute 'axes' (expected: axis)", 3, 12),
    ("op-attribute-type", HEAD + 'output y = softmax(x, axis="last")', "attribute 'axis' expects int", 3, 12),
    ("op-tensor-attribute", HEAD + "output y = softmax(x, axis=x)",
     "attribute 'axis' of 'softmax' must be a compile-time value, got tensor f32[2,4]", 3, 12),
    ("shape-mismatch", HEAD + "input w: f32[3]\noutput y = x + w",
     "shape mismatch in '+': f32[2,4] and f32[3] do not broadcast", 4, 14),
    ("matmul-shapes", HEAD + "input w: f32[3, 5]\noutput y = x @ w",
     "contraction sizes differ: f32[2,4] and f32[3,5]", 4, 14),
    ("dtype-mismatch", HEAD + "input i: i32[2, 4]\noutput y = x * i", "dtype mismatch in '*': f32[2,4] and i32[2,4]", 4, 14),
    ("literal-dtype", HEAD + "input i: i32[2, 4]\noutput y = i * 0.5",
     "dtype mismatch in '*': float 0.5 with a tensor of dtype i32", 4, 14),
    ("duplicate-let", HEAD + "let a = 1\nlet a = 2", "'a' is already defined (at <t>:3:5)", 4, 5),
    ("duplicate-def", HEAD + "def f() { return 1 }\ndef f() { return 2 }", "'f' is already defined (as a function)", 4, 5),
    ("duplicate-config-field", "config { n: int = 1  n: int = 2 }", "config field 'n' declared twice", 1, 22),
    ("duplicate-input", HEAD + "input x: f32[1]", "input 'x' declared twice", 3, 7),
    ("param-named-like-input", HEAD + "param x: f32[1] = zeros", "param 'x' has the name of an input", 3, 7),
    ("input-named-like-param", HEAD + "param w: f32[1] = zeros\ninput w: f32[1]",
     "input 'w' has the name of a param (at <t>:3:7)", 4, 7),
    ("duplicate-output", HEAD + "output y = x\noutput y = x", "output 'y' declared twice", 4, 8),
    ("duplicate-param", HEAD + "def lin(t) {\n  param w: f32[n, n] = zeros\n  return t @ w\n}\noutput y = lin(lin(x))",
     "param 'w' declared twice (first at <t>:4:9); give each call of a function with params its own scope", 4, 9),
    ("function-arity", HEAD + "def f(a) { return a }\noutput y = f(x, x)", "'f' takes 1 argument(s), got 2", 4, 12),
    ("function-missing-argument", HEAD + "def f(a) { return a }\noutput y = f()", "'f' is missing argument 'a'", 4, 12),
    ("function-unknown-keyword", HEAD + "def f(a) { return a }\noutput y = f(b=x)", "'f' has no parameter 'b'", 4, 12),
    ("builtin-arguments", HEAD + "output y = reshape(x)", "bad arguments to 'reshape': missing a required argument: 'shape'",
     3, 12),
    ("unknown-dtype", HEAD + "input z: f33[2]\noutput y = x", "unknown dtype 'f33' (expected one of f32,", 3, 10),
    ("bad-dimension", HEAD + "input z: f32[2.5]\noutput y = x", "a dimension must be a non-negative integer, got float 2.5",
     3, 14),
    ("unknown-initializer", HEAD + "param w: f32[2] = normel(std=1.0)\noutput y = x",
     "unknown initializer 'normel' (did you mean 'normal'", 3, 19),
    ("positional-initializer", HEAD + "param w: f32[2] = normal(0.02)\noutput y = x",
     "initializer arguments must be named, e.g. normal(std=0.02)", 3, 19),
    ("bad-initializer-argument", HEAD + "param w: f32[2] = normal(sigma=0.1)\noutput y = x",
     "bad arguments to initializer 'normal'", 3, 19),
    ("index-range", HEAD + "output y = x[5]", "index 5 out of range for axis 0 of f32[2,4]", 3, 12),
    ("too-many-indices", HEAD + "output y = x[0, 0, 0]", "too many indices (3) for f32[2,4]", 3, 12),
    ("negative-step", HEAD + "output y = x[::-1]", "slice steps must be positive, got -1", 3, 12),
    ("reshape", HEAD + "output y = reshape(x, [3, -1])", "cannot reshape f32[2,4] (8 elements) to [3, -1]", 3, 12),
    ("split", HEAD + "let (a, b, c) = split(x, 3)\noutput y = a", "cannot split axis 1 of size 4 of f32[2,4] into 3", 3, 17),
    ("unpack", HEAD + "let (a, b) = (1, 2, 3)\noutput y = x", "cannot unpack tuple [1, 2, 3] into 2 names", 3, 1),
    ("return-outside", HEAD + "return x", "'return' outside a function", 3, 1),
    ("output-in-function", HEAD + "def f() { output y = x }\nlet a = f()", "'output' cannot appear inside a function", 3, 11),
    ("def-nested", HEAD + "if true { def g() { return 1 } }\noutput y = x", "'def' belongs at the top level", 3, 11),
    ("assign-undefined", HEAD + "y = x", "undefined name 'y' (define it with 'let y = ...')", 3, 1),
    ("assign-config", HEAD + "n = 3", "cannot assign to 'n': it is a config field, function or constant", 3, 1),
    ("recursion", HEAD + "def f(a) { return f(a) }\noutput y = f(x)", "function calls nest more than 64 deep", 3, 19),
    ("assertion", HEAD + 'assert n > 10, "n ({n}) is too small"\noutput y = x', "assertion failed: n (4) is too small", 3, 1),
    ("assertion-default-message", HEAD + "assert n > 10\noutput y = x", "assertion failed: n > 10", 3, 1),
    ("division-by-zero", HEAD + "let a = n // 0\noutput y = x", "division by zero", 3, 11),
    ("compile-time-types", HEAD + 'let a = n + "s"\noutput y = x', "unsupported operand types for '+': int and string", 3, 11),
    ("huge-integer", HEAD + "let a = 10 ** 40\noutput y = x", "integer 10 ** 40 is too large", 3, 12),
    ("if-not-boolean", HEAD + "if n { }\noutput y = x", "'if' needs a compile-time boolean, got int 4", 3, 4),
    ("tensor-attribute", HEAD + "output y = x.shap", "tensor f32[2,4] has no attribute 'shap' (tensors have shape,", 3, 14),
    ("not-callable", HEAD + "let a = 3\noutput y = a(x)", "int 3 is not callable", 4, 12),
    ("scoped-op", HEAD + "output y = fc.relu(x)", "only functions take a scope: 'fc.relu(...)' calls op 'relu'", 3, 12),
    ("op-needs-tensor", HEAD + "output y = exp(1.0)", "'exp' needs a tensor operand, got float 1.0", 3, 12),
    ("no-outputs", HEAD, "the model declares no outputs", 1, 1),
    ("for-non-tuple", HEAD + "for i in 3 { }\noutput y = x", "'for' needs a tuple or range(...), got int 3", 3, 10),
    ("range-too-long", HEAD + "for i in range(10 ** 9) { }\noutput y = x", "range of 1000000000 values is too long", 3, 10),
    ("string-brace", HEAD + 'scope "h.{" { }\noutput y = x', "unmatched '{' in a string", 3, 7),
    ("scope-name", HEAD + 'scope "a b" { }\noutput y = x', "scope name 'a b' must be dot-separated", 3, 7),
    ("interpolated-name", HEAD + 'scope "h.{m}" { }\noutput y = x', "undefined name 'm'", 3, 11),
    ("interpolated-syntax", HEAD + 'scope "h.{1 +}" { }\noutput y = x', "syntax error: unexpected end of input", 3, 14),
    ("train-in-function", HEAD + "def f() { train { } }\nlet a = f()", "'train' cannot appear inside a function", 3, 11),
    ("not-a-boolean-logic", HEAD + "let a = n and true\noutput y = x", "'and' needs a compile-time boolean, got int 4", 3, 9),
    ("tensor-in-string", HEAD + 'scope "{x}" { }\noutput y = x', "cannot put tensor f32[2,4] into a string", 3, 9),
    ("floor-division-tensor", HEAD + "output y = x // 2", "'//' works on compile-time numbers only", 3, 14),
    ("keyword-repeated", HEAD + "output y = softmax(x, axis=0, axis=1)", "keyword argument 'axis' given twice", 3, 31),
    ("positional-after-keyword", HEAD + "output y = where(x > 0, x=x, 0.0)", "positional argument after keyword arguments", 3, 30),
    ("config-default-type", "config { n: int = 2.5 }\ninput x: f32[n]\noutput y = x",
     "default of 'n': expected int, got 2.5", 1, 10),
    ("config-type", "config { n: integer = 2 }", "unknown config type 'integer' (expected int, float, bool, str)", 1, 13),
    ("config-default-tensor", "config { n: int = iota(shape=[2]) }", "a config default must be a compile-time value", 1, 19),
]


def lower_text(text: str, *overrides: str, training: bool = True):
    return build(Source(text, "<t>"), parse_overrides(overrides), training=training)


@pytest.mark.parametrize("case, text, message, line, col", CASES, ids=[c[0] for c in CASES])
def test_error_names_file_line_and_column(case, text, message, line, col):
    with pytest.raises((FrontendError, ConfigError)) as info:
        lower_text(text)
    err = info.value
    assert message in err.message
    assert (err.location.file, err.location.line, err.location.col) == ("<t>", line, col), err.render()
    rendered = err.render().splitlines()
    assert rendered[0] == f"<t>:{line}:{col}: error: {err.message}"
    if len(rendered) > 1:  # the source line and a caret under the column
        assert rendered[1] == text.splitlines()[line - 1] and rendered[2] == " " * (col - 1) + "^"


def test_there_are_at_least_25_distinct_cases():
    assert len({c[2] for c in CASES}) >= 25


def test_builder_errors_inside_functions_point_at_the_function_body():
    text = HEAD + "def f(t) {\n  return t @ t\n}\noutput y = f(x)"
    with pytest.raises(FrontendError) as info:
        lower_text(text)
    assert info.value.location.line == 4 and "'matmul': contraction sizes differ" in info.value.message


def test_errors_inside_train_blocks_only_show_when_training():
    text = HEAD + "output y = x\ntrain { output loss = undefined_thing }"
    assert list(lower_text(text, training=False).outputs) == ["y"]
    with pytest.raises(FrontendError, match="undefined name 'undefined_thing'"):
        lower_text(text)


@pytest.mark.parametrize("override, message", [
    ("model.n=abc", "override 'model.n=abc': model.n: expected int, got 'abc'"),
    ("model.m=3", "unknown config key 'model.m'"),
    ("model.nn=3", "unknown config key 'model.nn' (did you mean model.n?)"),
    ("+model.n=3", "'model.n' already exists; change it with model.n=..."),
    ("n=3", "unknown config key 'n' (model fields are 'model.<field>'"),
    ("model.n.k=3", "'model.n.k' is nested too deeply"),
    ("model.n=1,2", "sweeps (several values) are not supported"),
    ("~model.n", "deleting keys is not supported"),
    ("model.n==", "bad override 'model.n=='"),
    ("model.n=true", "model.n: expected int, got true"),
    ("+model.extra=[1,2]", "an added key needs a number, boolean or string"),
    ("model.n=99999999999999999999", "model.n: expected int, got 99999999999999999999 (beyond 64 bits)"),
    ("+model.extra=-9223372036854775808", "model.extra: expected int, got -9223372036854775808 (beyond 64 bits)"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError) as info:
        lower_text(HEAD + "output y = x", override)
    assert message in info.value.message


def test_a_bad_override_value_points_at_the_field_declaration():
    with pytest.raises(ConfigError) as info:
        lower_text(HEAD + "output y = x", "model.n=abc")
    assert info.value.render().splitlines()[1:] == ["config { n: int = 4 }", " " * 9 + "^"]


@pytest.mark.parametrize("expression, col", [
    ("-" * 1000 + "1.0", 9 + 98),  # the 99th minus: the program, its statement and 98 minuses above it
    ("abs(" * 1000 + "1.0" + ")" * 1000, 9 + 4 * 49),  # the 50th call: a call and its arguments are two levels
], ids=["1000-unary-minuses", "1000-nested-calls"])
def test_deep_expressions_are_a_one_line_error(expression, col):
    with pytest.raises(FrontendError) as info:
        lower_text(HEAD + f"let c = {expression}\noutput y = x")
    assert "nested too deeply: more than 100 levels" in info.value.message
    assert info.value.location.line == 3
    assert info.value.location.col == col


def test_a_5000_term_sum_lowers_left_to_right():
    """Sums and products parse flat: a long chain is not deep, and folds left to right."""
    graph = lower_text(HEAD + f"let c = {' + '.join(['1'] * 5000)} - 4999 * 2 * 2 * 2 // 8 - 3 - 2\n"
                       'assert c == -4, "c is {c}"\noutput y = x')
    assert list(graph.outputs) == ["y"]


def test_deep_blocks_are_a_one_line_error():
    with pytest.raises(FrontendError, match="nested too deeply") as info:
        lower_text(HEAD + "if true { " * 5000 + "}" * 5000 + "\noutput y = x")
    assert info.value.location.line == 3


def test_nesting_below_the_limit_still_lowers():
    graph = lower_text(HEAD + f"let c = {'-' * 90}2.0\noutput y = x * c")
    assert list(graph.outputs) == ["y"]


def test_a_5000_digit_integer_is_a_one_line_error():
    with pytest.raises(FrontendError, match="integer literal of 5000 digits is too large") as info:
        lower_text(HEAD + f"let c = {'7' * 5000}\noutput y = x")
    assert (info.value.location.line, info.value.location.col) == (3, 9)
