"""What RDL constructs mean: each lowered graph is run by the reference interpreter."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from compiler.config import parse_overrides
from compiler.frontend import Source, build
from ir.dtypes import DType
from ir.interpreter import interpret
from ir.printer import print_graph
from ir.verifier import verify


def lower_text(text: str, *overrides: str, training: bool = True):
    graph = build(Source(textwrap.dedent(text), "t.rdl"), parse_overrides(overrides), training=training)
    verify(graph)
    return graph


def run(graph, **inputs):
    return interpret(graph, inputs, {p.name: np.full(p.type.shape, 0.5, p.type.dtype.np) for p in graph.params}).outputs


X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)


@pytest.mark.parametrize("expr, expected", [
    ("x[0]", X[0]),
    ("x[-1, 1:]", X[-1, 1:]),
    ("x[:, :-1]", X[:, :-1]),
    ("x[..., 0]", X[..., 0]),
    ("x[1, ..., ::2]", X[1, ..., ::2]),
    ("x[:, 5:]", X[:, 5:]),
    ("x[:, 1, 2]", X[:, 1, 2]),
    ("reshape(x, [4, -1])", X.reshape(4, -1)),
    ("flatten(x)", X.reshape(2, -1)),
    ("x.T", np.swapaxes(X, -1, -2)),
    ("transpose(x, [2, 0, 1])", X.transpose(2, 0, 1)),
    ("permute(x, [1, 0, 2])", X.transpose(1, 0, 2)),
    ("swapaxes(x, 0, 2)", np.swapaxes(X, 0, 2)),
    ("unsqueeze(x, -1)", X[..., None]),
    ("squeeze(unsqueeze(x, 1), 1)", X),
    ("-x * 2 + 1", -X * 2 + 1),
    ("x ** 2 / 4.0", X**2 / 4),
    ("2.0 - x", 2 - X),
    ("maximum(x, 10.0)", np.maximum(X, 10)),
    ("where(x > 5.0, x, 0.0)", np.where(X > 5, X, 0)),
    ("cast(x >= 12.0, dtype=i32)", (X >= 12).astype(np.int32)),
    ("sum(x, axes=[1, 2])", X.sum(axis=(1, 2))),
    ("softmax(x, axis=-1)", np.exp(X - X.max(-1, keepdims=True)) / np.exp(X - X.max(-1, keepdims=True)).sum(-1, keepdims=True)),
    ("x @ x.T", X @ np.swapaxes(X, -1, -2)),
    ("split(x, 2)[1]", X[..., 2:]),
    ("concat(x, x, axis=0)", np.concatenate([X, X])),
    ("x[:, 1:][0]", X[:, 1:][0]),
])
def test_tensor_expressions(expr, expected):
    graph = lower_text(f"input x: f32[2, 3, 4]\noutput y = {expr}")
    got = run(graph, x=X)["y"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_full_slice_emits_no_op():
    assert not lower_text("input x: f32[2, 3]\noutput y = x[:, :]").ops


@pytest.mark.parametrize("expr, expected", [
    ("7 // 2 + 7 % 4", 6), ("2 ** 10", 1024), ("1 / 4", 0.25), ("-(3 - 5)", 2), ("2 * (1 + 2) ** 2", 18),
    ("[1, 2] + [3]", (1, 2, 3)), ('"ab" * 2', "abab"), ("len(range(2, 11, 3))", 3), ("(4, 5, 6)[-1]", 6),
    ("3 < 4 and not (2 == 3)", True), ("false or 1 != 1", False), ("float(3)", 3.0), ("int(2.7)", 2),
    ('"h.{1 + 1}.{true}"', "h.2.true"), ('"{{literal}}"', "{literal}"), ("n * 2", 8), ("none == none", True),
    ("[1, 2, 3][1:]", (2, 3)), ("x.shape[-1] * x.rank", 8), ("x.dtype == f32", True),
])
def test_compile_time_values(expr, expected):
    lower_text(f"config {{ n: int = 4 }}\ninput x: f32[3, 4]\nassert ({expr}) == {_rdl(expected)}\noutput y = x")
    with pytest.raises(Exception, match="assertion failed"):
        lower_text(f"config {{ n: int = 4 }}\ninput x: f32[3, 4]\nassert ({expr}) != {_rdl(expected)}\noutput y = x")


def _rdl(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_rdl, value)) + "]"
    if isinstance(value, str):
        return '"' + value.replace("{", "{{").replace("}", "}}") + '"'
    return repr(value)


def test_python_scalars_take_the_tensor_dtype():
    graph = lower_text("""
        input ids: i32[4]
        input x: f32[4]
        output m = ids == 1
        output y = x * 2
    """)
    fulls = [op for op in graph.ops if op.name == "full"]
    assert [op.attrs["dtype"] for op in fulls] == [DType.i32, DType.f32]
    out = run(graph, ids=np.array([1, 0, 1, 2], np.int32), x=np.ones(4, np.float32))
    np.testing.assert_array_equal(out["m"], [True, False, True, False])
    np.testing.assert_array_equal(out["y"], [2, 2, 2, 2])


def test_scopes_functions_and_loops_name_params_hierarchically():
    graph = lower_text("""
        config { layers: int = 3 }
        def lin(t, n) {
          param weight: f32[n, n] = zeros
          param bias: f32[n] = zeros
          return matmul(t, weight, transpose_b=true) + bias
        }
        def block(t) { return t + mlp.fc.lin(t, 4) }
        input x: f32[2, 4]
        scope "model" {
          param embed.weight: f32[4] = ones
          let h = x * embed.weight
          for i in range(layers) {
            scope "layers.{i}" { h = block(h) }
          }
        }
        output y = h * model.embed.weight
    """)
    names = [p.name for p in graph.params]
    assert names == ["model.embed.weight"] + [f"model.layers.{i}.mlp.fc.{w}" for i in range(3) for w in ("weight", "bias")]


def test_function_arguments_defaults_keywords_and_tuples():
    graph = lower_text("""
        def affine(t, scale=2.0, shift=0.0) { return t * scale + shift }
        def pair(t) { return (t, -t) }
        input x: f32[3]
        let (a, b) = pair(affine(x, shift=1.0))
        output y = a + affine(b, 3.0)
    """)
    x = np.array([1, 2, 3], np.float32)
    np.testing.assert_allclose(run(graph, x=x)["y"], (2 * x + 1) - 3 * (2 * x + 1))


def test_if_elif_else_and_rebinding():
    text = """
        config { mode: str = "a" }
        input x: f32[2]
        let y = x
        if mode == "a" { y = y + 1.0 } elif mode == "b" { y = y * 3.0 } else { y = -y }
        output out = y
    """
    x = np.array([1, 2], np.float32)
    for mode, expected in (("a", x + 1), ("b", x * 3), ("c", -x)):
        np.testing.assert_allclose(run(lower_text(text, f"model.mode={mode}"), x=x)["out"], expected)


def test_blocks_scope_their_lets_but_scope_statements_do_not():
    graph = lower_text("""
        input x: f32[2]
        scope "s" { let inner = x + 1.0 }
        for i in range(2) { let tmp = x }
        output y = inner
    """)
    assert list(graph.outputs) == ["y"]
    with pytest.raises(Exception, match="undefined name 'tmp'"):
        lower_text("input x: f32[2]\nfor i in range(2) { let tmp = x }\noutput y = tmp")


def test_functions_do_not_see_the_callers_variables():
    with pytest.raises(Exception, match="undefined name 'secret'"):
        lower_text("def f() { return secret }\ninput x: f32[1]\nlet secret = x\noutput y = f()")


def test_train_blocks_are_lowered_only_for_training():
    text = """
        input x: f32[4, 3]
        output logits = x * 2.0
        train {
          input labels: i32[4]
          output loss = cross_entropy(logits, labels)
        }
    """
    assert [v.name for v in lower_text(text, training=False).inputs] == ["x"]
    graph = lower_text(text)
    assert [v.name for v in graph.inputs] == ["x", "labels"] and list(graph.outputs) == ["logits", "loss"]


def test_config_defaults_follow_earlier_fields_and_added_keys_are_visible():
    text = """
        config {
          n: int = 2
          m: int = 3 * n
          eps: float = 1e-5
          flag: bool = false
        }
        input x: f32[m]
        assert extra == 7
        output y = x
    """
    graph = lower_text(text, "model.n=5", "+model.extra=7")
    assert graph.input("x").type.shape == (15,)


def test_every_op_is_located_at_its_expression():
    graph = lower_text("input x: f32[2]\nlet a = x + 1.0\noutput y = relu(a)")
    located = [(op.name, op.locs[0].line, op.locs[0].col) for op in graph.ops]
    assert located == [("full", 2, 11), ("add", 2, 11), ("relu", 3, 12)]
    assert 'loc("t.rdl":3:12)' in print_graph(graph)


def test_model_name_and_comments():
    graph = lower_text("# a comment\nmodel tiny  # trailing comment\ninput x: f32[1]\noutput y = x")
    assert graph.name == "tiny"
    assert lower_text("input x: f32[1]\noutput y = x").name == "t"


def test_output_of_an_existing_variable():
    graph = lower_text("input x: f32[2]\nlet h = relu(x)\noutput h\noutput twice = h")
    assert list(graph.outputs) == ["h", "twice"] and graph.outputs["h"] is graph.outputs["twice"]


def test_functions_and_ops_are_values():
    graph = lower_text("""
        def apply(f, t) { return f(t) }
        input x: f32[2]
        output y = apply(relu, x) + apply(neg, x)
    """)
    assert [op.name for op in graph.ops] == ["relu", "neg", "add"]


def test_the_language_reference_example_lowers():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "compiler" / "frontend" / "RDL.md").read_text()
    example = doc.split("```\n", 2)[1]
    graph = lower_text(example)
    assert graph.name == "gpt2" and list(graph.outputs) == ["logits", "loss"]
    assert [p.name for p in graph.params][:3] == ["transformer.wte.weight", "transformer.h.0.mlp.c_fc.weight",
                                                  "transformer.h.0.mlp.c_fc.bias"]
