"""Each verifier rule: the message names the op and what is wrong, at its file:line:col."""
from __future__ import annotations

import pytest

from ir.builder import Builder, make_op
from ir.dtypes import f32, i32
from ir.errors import Location, VerifyError
from ir.graph import Graph, Op, Region, Role, Value
from ir.init import Init
from ir.parser import parse_with_positions
from ir.types import TensorType
from ir.verifier import verify

F23 = TensorType((2, 3), f32)
LOC = Location("model.rdl", 7, 9)


def text_error(text: str) -> VerifyError:
    """The verifier's error for IR text that parses."""
    graph, positions = parse_with_positions(text, "bad.ir")
    with pytest.raises(VerifyError) as info:
        verify(graph, positions)
    return info.value


def graph_error(graph: Graph) -> VerifyError:
    with pytest.raises(VerifyError) as info:
        verify(graph)
    return info.value


def where(err: VerifyError) -> str:
    return str(err.location)


def located_builder() -> tuple[Builder, Value]:
    b = Builder(Graph("g"))
    x = b.input("x", F23)
    return b, x


# --- rules reachable from IR text ----------------------------------------------------------
HEAD = """graph @g {
  input %x : f32[2,3]
  param @w : f32[3] = zeros
  buffer @mean : f32[3] = zeros
"""


def test_result_type_mismatch():
    err = text_error(HEAD + "  %0 = add(%x, @w) : f32[3,2]\n  output y = %0\n}\n")
    assert err.message == ("op %0 = add: result types f32[3,2] do not match the type rule, which gives f32[2,3]")
    assert where(err) == "bad.ir:5:8"


def test_type_rule_violation():
    err = text_error(HEAD + "  %0 = matmul(%x, %x) : f32[2,3]\n}\n")
    assert err.message == "op %0 = matmul: contraction sizes differ: f32[2,3] and f32[2,3] (K = 3 vs 2)"
    assert where(err) == "bad.ir:5:8"


def test_wrong_operand_count():
    err = text_error(HEAD + "  %0 = neg(%x, %x) : f32[2,3]\n}\n")
    assert err.message == "op %0 = neg: expects 1 operand(s), got 2"
    assert where(err) == "bad.ir:5:8"


def test_result_count_mismatch_with_the_type_rule():
    err = text_error(HEAD + "  %0, %1 = neg(%x) : f32[2,3], f32[2,3]\n}\n")
    assert err.message == ("op %0, %1 = neg: result types f32[2,3], f32[2,3] do not match the type rule, "
                           "which gives f32[2,3]")
    assert where(err) == "bad.ir:5:12"


def test_update_of_a_buffer():
    err = text_error(HEAD + "  %0 = neg(@mean) : f32[3]\n  update @mean = %0\n}\n")
    assert err.message == "update of @mean, which is not a trainable param or state"
    assert where(err) == "bad.ir:6:10"


def test_update_of_an_unknown_param():
    err = text_error(HEAD + "  %0 = neg(@w) : f32[3]\n  update @v = %0\n}\n")
    assert err.message == "update of @v, which is not a trainable param or state"
    assert where(err) == "bad.ir:6:10"


def test_update_of_the_wrong_type():
    err = text_error(HEAD + "  %0 = sum(%x) {axes = [0]} : f32[3]\n  %1 = cast(%0) {dtype = bf16} : bf16[3]\n"
                     "  update @w = %1\n}\n")
    assert err.message == "update of @w has type bf16[3], the param is f32[3]"
    assert where(err) == "bad.ir:7:10"


def test_region_argument_count():
    err = text_error(HEAD + """  %0 = fused(%x, @w) : f32[2,3] {
  ^(%1: f32[2,3]):
    %2 = neg(%1) : f32[2,3]
    yield %2
  }
}
""")
    assert err.message == "op %0 = fused: region takes 1 arguments but the op has 2 operands"
    assert where(err) == "bad.ir:5:8"


def test_region_argument_type():
    err = text_error(HEAD + """  %0 = fused(%x) : f32[3,2] {
  ^(%1: f32[3,2]):
    yield %1
  }
}
""")
    assert err.message == "op %0 = fused: region argument 0 is f32[3,2] but operand 0 is f32[2,3]"
    assert where(err) == "bad.ir:5:8"


def test_error_inside_a_region_names_the_inner_op():
    err = text_error(HEAD + """  %0 = fused(%x) : f32[2,3] {
  ^(%1: f32[2,3]):
    %2 = add(%1, %1) : f32[3]
    yield %2
  }
}
""")
    assert err.message == "op %2 = add: result types f32[3] do not match the type rule, which gives f32[2,3]"
    assert where(err) == "bad.ir:7:10"


def test_fused_result_types_follow_the_region():
    err = text_error(HEAD + """  %0, %1 = fused(%x) : f32[2,3], f32[2,3] {
  ^(%2: f32[2,3]):
    yield %2
  }
}
""")
    assert err.message == ("op %0, %1 = fused: result types f32[2,3], f32[2,3] do not match the type rule, "
                           "which gives f32[2,3]")
    assert where(err) == "bad.ir:5:12"


def test_param_name_that_is_not_an_identifier():
    err = text_error("graph @g {\n  input %x : f32[2]\n  param @1w : f32[2] = zeros\n}\n")
    assert err.message == "param name '1w' is not a valid identifier"
    assert where(err) == "bad.ir:3:9"


def test_graph_name_that_is_not_an_identifier():
    err = text_error("graph @9g {\n  input %x : f32[2]\n}\n")
    assert err.message == "graph name '9g' is not a valid identifier"


def test_a_valid_text_graph_passes():
    graph, positions = parse_with_positions(HEAD + """  %0 = add(%x, @w) : f32[2,3]
  %1, %2 = fused(%0, @w) {label = "k"} : f32[2,3], f32[3] {
  ^(%3: f32[2,3], %4: f32[3]):
    %5 = mul(%3, %4) : f32[2,3]
    %6 = sum(%5) {axes = [0]} : f32[3]
    yield %5, %6
  }
  output y = %1
  update @w = %2
}
""", "ok.ir")
    verify(graph, positions)


# --- rules only a built (or rewritten) graph can break ------------------------------------------
def test_use_before_definition():
    b, x = located_builder()
    with b.at(LOC):
        early = b.neg(x)
        late = b.exp(x)
    b.graph.ops[0].operands = [late]  # the first op now uses the second op's result
    err = graph_error(b.graph)
    assert err.message == "op %0 = neg: operand 0 is used before it is defined (or is from another scope)"
    assert where(err) == "model.rdl:7:9"
    assert early is not late


def test_operand_from_another_graph():
    b, x = located_builder()
    stranger = Value(F23, name="x")
    with b.at(Location("m.rdl", 2, 4)):
        b.output("y", b.add(x, stranger))
    err = graph_error(b.graph)
    assert err.message == "op %0 = add: operand 1 is used before it is defined (or is from another scope)"
    assert where(err) == "m.rdl:2:4"


def test_bad_attribute_value():
    b, x = located_builder()
    with b.at(LOC):
        b.output("y", b.sum(x, axes=(1,)))
    b.graph.ops[0].attrs["axes"] = (4,)
    err = graph_error(b.graph)
    assert err.message == "op %0 = sum: axis 4 out of range for rank 2"
    assert where(err) == "model.rdl:7:9"


def test_unknown_attribute():
    b, x = located_builder()
    with b.at(LOC):
        b.output("y", b.exp(x))
    b.graph.ops[0].attrs["fast"] = True
    err = graph_error(b.graph)
    assert err.message == "op %0 = exp: unknown attribute 'fast' (expected: none)"
    assert where(err) == "model.rdl:7:9"


def test_attribute_not_in_canonical_form():
    b, x = located_builder()
    with b.at(LOC):
        b.output("y", b.sum(x, axes=(1,)))
    del b.graph.ops[0].attrs["keepdims"]  # a default left out
    err = graph_error(b.graph)
    assert err.message == ("op %0 = sum: attributes are not in canonical form (defaults filled, values normalized)")
    assert where(err) == "model.rdl:7:9"


def test_unknown_op():
    b, x = located_builder()
    op = Op("sofmax", [x], {}, locs=(LOC,))
    op.results = [Value(F23, op, 0)]
    b.graph.ops.append(op)
    err = graph_error(b.graph)
    assert err.message == "op %0 = sofmax: unknown op 'sofmax' (did you mean 'softmax', 'log_softmax', 'max'?)"
    assert where(err) == "model.rdl:7:9"


def test_duplicate_input_names():
    b, _ = located_builder()
    b.input("x", F23)
    err = graph_error(b.graph)
    assert err.message == "input name 'x' is declared twice"
    assert err.location is None  # a built graph has no text to point into


def test_param_named_like_an_input():
    b, _ = located_builder()
    b.param("x", F23, Init("zeros"))
    assert graph_error(b.graph).message == "param name 'x' is declared twice"


def test_value_defined_twice():
    b, x = located_builder()
    with b.at(LOC):
        y = b.neg(x)
    b.graph.ops.append(b.graph.ops[0])  # the same op (and its result) twice
    err = graph_error(b.graph)
    assert err.message == "op %1 = neg: defines a value that is already defined"
    assert where(err) == "model.rdl:7:9"
    assert y.producer is b.graph.ops[1]


def test_result_not_pointing_back_to_its_op():
    b, x = located_builder()
    with b.at(LOC):
        b.neg(x)
    b.graph.ops[0].results[0].index = 3
    err = graph_error(b.graph)
    assert err.message == "op %0 = neg: result 0 does not point back to its op"


def _fused(b: Builder, operands: list[Value], region: Region) -> Op:
    op = make_op("fused", operands, {}, (LOC,), region=region)
    b.graph.ops.append(op)
    return op


def test_region_result_not_defined_in_the_region():
    b, x = located_builder()
    outer = b.neg(x)
    region = Region([Value(F23)])
    region.results = [region.args[0]]
    op = _fused(b, [x], region)
    region.results = [outer]
    err = graph_error(b.graph)
    assert err.message == "op %1 = fused: region result 0 is not defined inside the region"
    assert where(err) == "model.rdl:7:9"
    assert op.results[0].type == F23


def test_value_from_outside_the_region():
    b, x = located_builder()
    region = Region([Value(F23)])
    inner = Builder(b.graph, region.ops)
    with inner.at(Location("model.rdl", 12, 3)):
        region.results = [inner.add(region.args[0], x)]  # x is not a region argument
    _fused(b, [x], region)
    err = graph_error(b.graph)
    assert err.message == "op %2 = add: operand 1 is used before it is defined (or is from another scope)"
    assert where(err) == "model.rdl:12:3"


def test_region_that_yields_nothing():
    b, x = located_builder()
    region = Region([Value(F23)])
    with pytest.raises(VerifyError) as info:
        _fused(b, [x], region)
    assert info.value.message == "'fused': region yields no values"


def test_fused_without_a_region():
    b, x = located_builder()
    op = Op("fused", [x], {"label": ""}, locs=(LOC,))
    op.results = [Value(F23, op, 0)]
    b.graph.ops.append(op)
    err = graph_error(b.graph)
    assert err.message == "op %0 = fused: has no region"
    assert where(err) == "model.rdl:7:9"


def test_region_on_an_op_that_owns_none():
    b, x = located_builder()
    with b.at(LOC):
        b.neg(x)
    region = Region([Value(F23)])
    region.results = [region.args[0]]
    b.graph.ops[0].region = region
    err = graph_error(b.graph)
    assert err.message == "op %0 = neg: has a region, but 'neg' ops do not own one"
    assert where(err) == "model.rdl:7:9"


def test_output_of_an_undefined_value():
    b, x = located_builder()
    b.output("y", Value(F23))
    err = graph_error(b.graph)
    assert err.message == "output 'y' uses a value not defined in the graph"


def test_output_of_a_region_value():
    b, x = located_builder()
    region = Region([Value(F23)])
    region.results = [Builder(b.graph, region.ops).neg(region.args[0])]
    _fused(b, [x], region)
    b.output("y", region.results[0])
    assert graph_error(b.graph).message == "output 'y' uses a value not defined in the graph"


def test_output_name_that_does_not_print():
    b, x = located_builder()
    b.output("logits.0", x)
    assert graph_error(b.graph).message == "output name 'logits.0' is not a valid identifier"


def test_update_of_an_undefined_value():
    b, x = located_builder()
    b.param("w", TensorType((3,), f32), Init("zeros"), Role.state)
    b.update("w", Value(TensorType((3,), f32)))
    assert graph_error(b.graph).message == "update of @w uses a value not defined in the graph"


def test_input_with_a_producer():
    b, x = located_builder()
    with b.at(LOC):
        y = b.neg(x)
    y.name = "y"
    b.graph.inputs.append(y)
    assert graph_error(b.graph).message == "input 'y' has a producing op"


def test_index_typed_values_stay_typed():
    b = Builder(Graph("g"))
    table = b.param("emb", TensorType((5, 3), f32), Init("normal", {"std": 0.02}))
    ids = b.input("ids", TensorType((4,), i32))
    b.output("y", b.gather(table, ids))
    verify(b.graph)
