"""Run a graph through the backend's lowering and the kernel-program reference semantics,
and compare with the IR's reference interpreter (the oracle)."""
from __future__ import annotations

import msgpack
import numpy as np

from backend.pef.program import KernelProgram
from backend.pef.validate import validate
from backend.lowering import lower_graph, tensor_names
from backend.pef.reference import run_kernel
from backend.pef.schema import decode, encode
from ir.graph import Graph
from ir.interpreter import interpret
from backend_graphs import symbol_inputs


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Floats ~ N(0, 1); an integer input named `idx<N>...` is drawn from [0, N); bools are fair coins."""
    rng = np.random.default_rng(seed)
    out = {}
    for value in graph.inputs:
        t = value.type
        if t.dtype.is_float:
            out[value.name] = rng.normal(size=t.shape).astype(t.dtype.np)
        elif t.dtype.is_int:
            bound = int(value.name[3:].split("_")[0]) if value.name.startswith("idx") else 5
            out[value.name] = rng.integers(0, bound, size=t.shape).astype(t.dtype.np)
        else:
            out[value.name] = rng.random(t.shape) < 0.5
    return out


def msgpack_round_trip(program: KernelProgram) -> KernelProgram:
    """`program` encoded as the PEF encodes it, packed, unpacked and decoded again."""
    packed = msgpack.packb(encode(program), use_bin_type=True)
    return decode(KernelProgram, msgpack.unpackb(packed, raw=False, strict_map_key=True))


def run_lowered(graph: Graph, inputs: dict[str, np.ndarray]) -> tuple[list[KernelProgram], dict, dict]:
    """(programs, outputs by name, updates by name) from the lowered kernels."""
    names = tensor_names(graph)
    programs = lower_graph(graph, names)
    env = symbol_inputs(graph, inputs)
    for program in programs:
        validate(program)
        assert msgpack_round_trip(program) == program
        env.update(run_kernel(program, env))
    outputs = {k: env[names[v]] for k, v in graph.outputs.items()}
    updates = {k: env[names[v]] for k, v in graph.updates.items()}
    return programs, outputs, updates


def assert_matches_interpreter(graph: Graph, inputs: dict[str, np.ndarray] | None = None) -> list[KernelProgram]:
    """Lowered kernels compute what the interpreter computes; returns the programs."""
    inputs = inputs if inputs is not None else random_inputs(graph)
    expected = interpret(graph, inputs)
    programs, outputs, updates = run_lowered(graph, inputs)
    for table, ref in ((outputs, expected.outputs), (updates, expected.updates)):
        for name, want in ref.items():
            got = table[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            if want.dtype.kind == "f":
                np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=2e-5, atol=2e-6,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(got, want, err_msg=name)
    return programs
