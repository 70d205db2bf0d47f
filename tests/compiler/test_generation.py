"""RDL for generation: `cache` declarations, `cache_write`, the `mode` name, and the zoo models'
prefill and decode graphs (forward and training graphs do not change)."""
from __future__ import annotations

import numpy as np
import pytest

from compiler import zoo
from compiler.config import resolve
from compiler.frontend import Source, lower, parse_module
from compiler.frontend.lower import declares_caches
from ir.errors import FrontendError
from ir.graph import Role
from ir.interpreter import interpret

MODEL = """model m
config {
  batch_size: int = 2
  length: int = 5
}
input x: f32[batch_size, 1, 3]
input at: i32[batch_size]
let y = x
if mode == "decode" {
  cache c: f32[batch_size, length, 3]
  y = cache_write(c, x, at, axis=1)
}
output out = y
"""


def lowered(text: str, **kwargs):
    module = parse_module(Source(text, "m.rdl"))
    return lower(module, resolve(module.schema, []), **kwargs)


def error(text: str, **kwargs) -> str:
    with pytest.raises(FrontendError) as info:
        lowered(text, **kwargs)
    return str(info.value)


def test_a_cache_is_zero_state_written_in_place_by_cache_write():
    graph = lowered(MODEL, training=False, generate="decode")
    (cache,) = graph.params
    assert (cache.name, cache.role, cache.init.kind, str(cache.type)) == ("c", Role.state, "zeros", "f32[2,5,3]")
    assert [op.name for op in graph.ops] == ["dynamic_update_slice"] and graph.updates["c"] is graph.outputs["out"]
    x = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
    result = interpret(graph, {"x": x, "at": np.array([1, 4], np.int32)}, {"c": np.ones((2, 5, 3), np.float32)})
    want = np.ones((2, 5, 3), np.float32)
    want[0, 1], want[1, 4] = x[0, 0], x[1, 0]
    np.testing.assert_array_equal(result.updates["c"], want)


def test_mode_names_what_is_lowered():
    text = 'model m\ninput x: f32[2]\noutput out = x * float(len(mode))\n'
    assert [lowered(text, training=t).ops[0].name for t in (True, False)] == ["full", "full"]
    modes = {}
    for training, generate, name in ((True, None, "train"), (False, None, "forward"), (False, "prefill", "prefill"),
                                      (False, "decode", "decode")):
        graph = lowered(text, training=training, generate=generate)
        modes[name] = graph.ops[0].attrs["value"]
    assert modes == {"train": 5.0, "forward": 7.0, "prefill": 7.0, "decode": 6.0}


@pytest.mark.parametrize("text, kwargs, message", [
    (MODEL.replace('if mode == "decode"', "if true"), {"training": False},
     'm.rdl:10:3: error: a cache exists only in a generation step (mode "prefill" or "decode"), not in mode '
     '"forward"'),
    (MODEL.replace("cache_write(c,", "cache_write(x,"), {"training": False, "generate": "decode"},
     "m.rdl:11:7: error: cache_write needs a tensor declared with 'cache', got tensor f32[2,1,3]"),
    (MODEL.replace('if mode == "decode"', "if true"), {"training": True}, 'not in mode "train"'),
    (MODEL.replace("  y = cache_write(c, x, at, axis=1)\n", "  y = cache_write(c, x, at, axis=1)\n"
                   "  y = cache_write(c, x, at, axis=1)\n"), {"training": False, "generate": "decode"},
     "m.rdl:12:7: error: cache 'c' is written twice in one step"),
    (MODEL.replace("axis=1", "axis=0"), {"training": False, "generate": "decode"},
     "axis 0 out of range for f32[2,5,3]: 1 <= axis < rank (axis 0 holds the rows)"),
])
def test_mistakes_are_located(text, kwargs, message):
    assert message in error(text, **kwargs)


@pytest.mark.parametrize("name, prefix, width", [("gpt2", "transformer.h", 8), ("llama", "model.layers", 8)])
def test_zoo_generation_graphs(name, prefix, width):
    module = parse_module(zoo.source(name))
    assert declares_caches(module)
    config = resolve(module.schema, [])
    forward = lower(module, config, training=False)
    assert all(p.role == Role.param for p in forward.params) and not forward.updates
    for mode, tokens in (("prefill", 16), ("decode", 1)):
        graph = lower(module, config, training=False, generate=mode)
        caches = [p for p in graph.params if p.role == Role.state]
        assert [p.name for p in caches][:2] == [f"{prefix}.0.{a}.{kv}_cache" for a in
                                               (["attn"] if name == "gpt2" else ["self_attn"]) for kv in "kv"]
        assert len(caches) == 4 and set(graph.updates) == {p.name for p in caches}
        assert all(p.type.shape[2:] == (64, width) for p in caches)  # max_seq_length = n_positions, head dim
        assert {v.name: v.type.shape for v in graph.inputs} == {
            "input_ids": (2, tokens), "positions": (2,), **({"lengths": (2,)} if mode == "prefill" else {})}
        assert graph.outputs["logits"].type.shape == (2, 128)
        assert {p.name for p in graph.params if p.role == Role.param} == {p.name for p in forward.params}


def test_a_cache_longer_than_the_position_table_is_an_error():
    module = parse_module(zoo.source("gpt2"))
    from compiler.config import Setting
    with pytest.raises(FrontendError, match=r"max_seq_length \(65\) exceeds n_positions \(64\)"):
        lower(module, resolve(module.schema, [Setting("max_seq_length", 65, "test")]), training=False)


def test_a_model_with_caches_must_fit_the_runtime_contract(tmp_path):
    from compiler.driver import CompileOptions, compile_model

    path = tmp_path / "m.rdl"
    path.write_text(MODEL)
    with pytest.raises(FrontendError, match="model 'm' declares caches but no int config field 'max_seq_length'"):
        compile_model(CompileOptions(str(path), inference=True, emit="ir"))
    path.write_text(MODEL.replace("  length: int = 5\n", "  length: int = 5\n  max_seq_length: int = 5\n"))
    with pytest.raises(FrontendError) as info:
        compile_model(CompileOptions(str(path), inference=True, emit="ir"))
    assert str(info.value) == (
        "error: the prefill step of model 'm': input 'input_ids' must be an integer tensor of rank 2 with the batch "
        "first; input 'positions' must be an integer tensor of rank 1 with the batch first; input 'lengths' must be "
        "an integer tensor of rank 1 with the batch first; it has input 'x', which the runtime does not feed; it has "
        "input 'at', which the runtime does not feed; output 'logits' must be [batch, vocab]: the next token's "
        "logits of each sequence")


def test_a_decode_step_with_rank_1_token_ids_is_an_error_not_a_crash():
    from compiler.generation import check_interface
    from ir.builder import Builder
    from ir.dtypes import DType
    from ir.graph import Graph
    from ir.types import TensorType

    graph = Graph("m")
    b = Builder(graph)
    b.input("input_ids", TensorType((2,), DType.i32))
    b.input("positions", TensorType((2,), DType.i32))
    b.output("logits", b.full(shape=(2, 5), value=0.0, dtype=DType.f32))
    with pytest.raises(FrontendError, match=r"one token per sequence \(\[batch, 1\]\)"):
        check_interface("decode", graph)
