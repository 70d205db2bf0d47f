"""Zoo models compiled at an optimization level, with inputs, for runtime tests and benchmarks."""
from __future__ import annotations

import functools

import numpy as np

from compiler.driver import CompileOptions, Compiled, compile_model
from compiler.passes import PassManager
from compiler.pass_manager.levels import level_pipeline
from compiler.training import TrainingOptions

TARGET = "rdu-mini"


@functools.cache
def compiled(model: str, level: str, inference: bool, optimizer: str = "sgd", overrides: tuple[str, ...] = (),
             weight_dtype: str = "f32", world_size: int = 1) -> Compiled:
    """`rduflow compile MODEL -O<level> --target rdu-mini [--inference] [--weight-dtype D]
    [--data-parallel --world-size N]` (a world size above 1), in process (cached)."""
    training = TrainingOptions(optimizer=optimizer, data_parallel=world_size > 1, world_size=world_size)
    options = CompileOptions(model, overrides=overrides, inference=inference, target=TARGET,
                             pack_sections=level != "O0", training=training, weight_dtype=weight_dtype)
    return compile_model(options, PassManager.parse(level_pipeline(level)))


def inputs_for(graph, seed: int = 0, lr: float = 0.05) -> dict[str, np.ndarray]:
    """Random inputs of the right types: small non-negative integers (valid token ids,
    labels and token types), normal floats, and the learning rate."""
    rng = np.random.default_rng(seed)
    out = {}
    for value in graph.inputs:
        t = value.type
        if value.name == "lr":
            out[value.name] = np.full(t.shape, lr, t.dtype.np)
        elif t.dtype.is_int:
            out[value.name] = rng.integers(0, 4, t.shape).astype(t.dtype.np)
        else:
            out[value.name] = rng.standard_normal(t.shape).astype(t.dtype.np)
    return out
