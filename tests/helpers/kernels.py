"""Running a graph's kernel programs with one numpy array per buffer (no PEF, no arenas)."""
from __future__ import annotations

import ctypes

import numpy as np

from backend.lowering import lower_graph, tensor_names
from ir.dtypes import DType
from ir.graph import Graph
from ir.interpreter import initial_params
from runtime.jit.library import Jit
from runtime.jit.parallel import Parallel

_JIT: Jit | None = None
_PARALLEL = Parallel()


def shared_jit() -> Jit:
    global _JIT
    if _JIT is None:
        _JIT = Jit()
    return _JIT


def run_kernels(graph: Graph, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray] | None = None,
                seed: int = 0, jit: Jit | None = None,
                parallel: Parallel | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(outputs, updates) of a decomposed graph, computed by its JIT-compiled kernels (by `jit` on
    `parallel`'s threads, default the shared ones)."""
    names = tensor_names(graph)
    env: dict[str, np.ndarray] = {}
    for value in graph.inputs:
        env[names[value]] = np.ascontiguousarray(inputs[value.name])
    values = dict(initial_params(graph, seed), **(params or {}))
    for param in graph.params:
        env[names[param.value]] = np.ascontiguousarray(values[param.name])
    programs = lower_graph(graph, names)
    parallel = parallel or _PARALLEL
    for program, native in zip(programs, (jit or shared_jit()).load(programs)):
        arrays = []
        for buffer in program.buffers:
            if buffer.role != "input":
                env[buffer.name] = np.empty(buffer.shape, DType(buffer.dtype).np)
            arrays.append(env[buffer.name])
        args = (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))
        for stage in native.stages:
            status = parallel.run(stage.fn, args, stage.plan.extent, stage.plan.work, stage.plan.pieces)
            assert status == 0, f"kernel {program.name} returned {status}"
    outputs = {k: env[names[v]] for k, v in graph.outputs.items()}
    updates = {k: env[names[v]] for k, v in graph.updates.items()}
    return outputs, updates
