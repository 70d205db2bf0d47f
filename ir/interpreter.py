"""The reference interpreter: runs any graph with numpy. The oracle of every test."""
from __future__ import annotations

from typing import Mapping

import attrs
import numpy as np

from ir.dtypes import DType
from ir.errors import ExecutionError
from ir.graph import Graph, Op, Region, Value
from ir.ops import lookup


@attrs.frozen
class Result:
    """Named outputs and the new values of updated params."""

    outputs: dict[str, np.ndarray]
    updates: dict[str, np.ndarray]


def check_array(name: str, value, expected, what: str = "input") -> np.ndarray:
    """`value` as an array of the expected type, or ExecutionError naming the symbol."""
    array = np.asarray(value)
    if array.shape != expected.shape or array.dtype != expected.dtype.np:
        known = [d.value for d in DType if d.np == array.dtype]
        got = f"{known[0] if known else array.dtype}[{','.join(map(str, array.shape))}]"
        raise ExecutionError(f"{what} '{name}' must be {expected}, got {got}")
    return array


def initial_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Every param initialized from its initializer."""
    return {p.name: p.init.materialize(p.type, p.name, seed) for p in graph.params}


def _run_ops(ops: list[Op], env: dict[Value, np.ndarray]) -> None:
    for op in ops:
        args = [env[v] for v in op.operands]
        try:
            with np.errstate(all="ignore"):
                outs = lookup(op.name).evaluate(op, args, run_region)
        except IndexError as err:
            where = f" at {op.locs[0]}" if op.locs else ""
            raise ExecutionError(f"'{op.name}'{where}: {err}") from None
        except MemoryError:
            where = f" at {op.locs[0]}" if op.locs else ""
            sizes = ", ".join(str(r.type) for r in op.results)
            raise ExecutionError(f"'{op.name}'{where}: the reference interpreter cannot allocate "
                                 f"its result ({sizes})") from None
        env.update(zip(op.results, outs))


def run_region(region: Region, args: list[np.ndarray]) -> list[np.ndarray]:
    env = dict(zip(region.args, args))
    _run_ops(region.ops, env)
    return [env[v] for v in region.results]


def interpret(graph: Graph, inputs: Mapping[str, np.ndarray],
              params: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> Result:
    """Run `graph`; params not given are initialized from their initializers with `seed`."""
    missing = [v.name for v in graph.inputs if v.name not in inputs]
    if missing:
        raise ExecutionError(f"missing input(s): {', '.join(missing)}")
    env: dict[Value, np.ndarray] = {v: check_array(v.name, inputs[v.name], v.type) for v in graph.inputs}
    given = dict(params or {})
    for param in graph.params:
        if param.name in given:
            env[param.value] = check_array(param.name, given[param.name], param.type, "param")
        else:
            env[param.value] = param.init.materialize(param.type, param.name, seed)
    _run_ops(graph.ops, env)
    return Result({k: env[v] for k, v in graph.outputs.items()},
                  {k: env[v] for k, v in graph.updates.items()})
