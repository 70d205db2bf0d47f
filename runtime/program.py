"""The runtime's Python API: load a PEF, run it, get and set its params.

    program = runtime.load("out/gpt2/gpt2.pef")
    outputs = program.run({"input_ids": ids, "labels": labels, "lr": np.float32(1e-3)})
    program.run(inputs, outputs=["loss"])  # copies out only the loss, not the logits
    program.params["wte"]             # a param or optimizer state, as numpy
    program.params["wte"] = array      # replaced in place
    program.profile                    # host time per kernel, over the runs so far

A Program keeps its params and optimizer state resident between runs: a
training PEF's run applies one optimizer step in place.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from backend.pef.file import PEF, ParamSymbol, TensorSymbol, load_pef, read_pef
from ir.dtypes import DType, convert
from ir.errors import ExecutionError
from ir.init import Init
from ir.types import TensorType
from runtime.executor import Executor, shared_arenas
from runtime.jit.library import Jit
from runtime.jit.parallel import Parallel
from runtime.profile import Profile


#: the phases `evaluate` runs (untagged kernels belong to inference graphs)
FORWARD = frozenset({"fwd", None})


def _type_text(shape, dtype: str) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


def _checked(kind: str, symbol: TensorSymbol, value) -> np.ndarray:
    """`value` as an array of the symbol's type, or an ExecutionError naming it."""
    array = np.asarray(value)
    if array.shape != DType(symbol.dtype).storage_shape(symbol.shape) or array.dtype != DType(symbol.dtype).np:
        raise ExecutionError(f"{kind} '{symbol.name}' must be {_type_text(symbol.shape, symbol.dtype)}, "
                             f"got {array.dtype}{list(array.shape)}")
    return array


class Params(Mapping[str, np.ndarray]):
    """Named params, buffers and optimizer state of a loaded program (copies out, in place in)."""

    def __init__(self, program: Program):
        self._program = program
        self._symbols = {p.name: p for p in program.pef.symbols.params}

    def symbol(self, name: str) -> ParamSymbol:
        try:
            return self._symbols[name]
        except KeyError:
            known = ", ".join(sorted(self._symbols)) or "none"
            raise ExecutionError(f"no param '{name}' in this program (params: {known})") from None

    def view(self, name: str) -> np.ndarray:
        """The param's current value in place (read-only; valid until the next run)."""
        s = self.symbol(name)
        array = self._program.executor.view(s.tensor, s.shape, DType(s.dtype))
        array.flags.writeable = False
        return array

    def __getitem__(self, name: str) -> np.ndarray:
        return self.view(name).copy()

    def __setitem__(self, name: str, value) -> None:
        s = self.symbol(name)
        self._program.executor.view(s.tensor, s.shape, DType(s.dtype))[...] = _checked("param", s, value)

    def update(self, values: Mapping[str, np.ndarray]) -> None:  # type: ignore[override]
        for name, value in values.items():
            self[name] = value

    def roles(self) -> dict[str, str]:
        """Each name's role: param, buffer or state."""
        return {name: s.role for name, s in self._symbols.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self._symbols)

    def __len__(self) -> int:
        return len(self._symbols)


class Program:
    """A PEF loaded for execution: native kernels, resident memory, params."""

    def __init__(self, pef: PEF, *, seed: int = 0, jit: Jit | None = None, threads: int | None = None,
                 parallel: Parallel | None = None, memory: dict[str, np.ndarray] | None = None, communicator=None):
        """`memory` (another program's arenas, params already set) makes this an entry point of it;
        `communicator` (`runtime.distributed`) runs a data-parallel PEF's collectives."""
        self.pef = pef
        self.jit = jit or Jit(threads=threads)
        self.parallel = parallel or Parallel(threads)
        self.executor = Executor(pef, self.jit, self.parallel, memory if memory is not None else shared_arenas(pef),
                                 communicator)
        self.params = Params(self)
        self.profile = Profile(pef)
        self._entries: dict[str, Program] = {}
        if memory is None:
            self.initialize(seed)

    def entry(self, name: str) -> Program:
        """The PEF's entry point `name` (`pef.entry_names`), run over this program's memory: the
        params are shared, so what one entry writes into a state (a KV cache) the next one reads."""
        if name not in self._entries:
            if name not in self.pef.entry_names:
                known = ", ".join(self.pef.entry_names) or "none"
                raise ExecutionError(f"this PEF has no entry point '{name}' (entry points: {known})")
            program = Program(self.pef.entry(name), jit=self.jit, parallel=self.parallel, memory=self.executor.arenas)
            if self.executor.swaps or program.executor.swaps:
                raise ExecutionError(f"entry point '{name}' cannot share params that trade places with their "
                                     "updates after each run (only in-place updates can be shared)")
            self._entries[name] = program
        return self._entries[name]

    @property
    def inputs(self) -> dict[str, TensorSymbol]:
        return {s.name: s for s in self.pef.symbols.inputs}

    @property
    def outputs(self) -> dict[str, TensorSymbol]:
        return {s.name: s for s in self.pef.symbols.outputs}

    @property
    def mode(self) -> str:
        return self.pef.header.mode

    def initialize(self, seed: int = 0) -> None:
        """Every param and state from its initializer (as the reference interpreter does)."""
        for s in self.pef.symbols.params:
            value = Init(s.init, s.init_args).materialize(TensorType(s.shape, DType(s.dtype)), s.name, seed)
            self.params[s.name] = convert(value, DType(s.dtype))

    def run(self, inputs: Mapping[str, np.ndarray], *, outputs: Iterable[str] | None = None,
            profile: bool = False) -> dict[str, np.ndarray]:
        """One execution: every input bound by symbol name; returns copies of the outputs named in
        `outputs` (default: all; a training loop that reads the loss need not copy the logits).

        A training program also applies its param updates (in place)."""
        chosen = self._chosen(self.pef.symbols.outputs, outputs)
        self._bind_inputs(inputs)
        timings: list[float] | None = [] if profile else None
        self.executor.step(timings)
        result = self._copies(chosen)
        self.executor.commit_updates()
        if timings is not None:
            self.profile.add_step(timings)
        return result

    def step(self, inputs: Mapping[str, np.ndarray], *, outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One training step: every section; params and optimizer state update in place."""
        return self.run(inputs, outputs=outputs)

    def evaluate(self, inputs: Mapping[str, np.ndarray], *,
                 outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The forward sections only (outputs such as the loss); nothing is updated.

        Outputs computed outside the forward phase are not returned (nor can they be named)."""
        chosen = self._chosen(self._forward_outputs, outputs)
        self._bind_inputs(inputs)
        self.executor.step(phases=FORWARD)
        return self._copies(chosen)

    def _chosen(self, symbols: Iterable[TensorSymbol], names: Iterable[str] | None) -> list[TensorSymbol]:
        """The output symbols `names` (or one name) picks from `symbols` (all of them for None);
        ExecutionError for a name that is not among them."""
        symbols = list(symbols)
        if names is None:
            return symbols
        by_name = {s.name: s for s in symbols}
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in by_name:
                known = ", ".join(by_name) or "none"
                raise ExecutionError(f"no output '{name}' to return here (outputs: {known})")
        return [by_name[name] for name in dict.fromkeys(names)]

    def _copies(self, symbols: Iterable[TensorSymbol]) -> dict[str, np.ndarray]:
        return {s.name: self.executor.view(s.tensor, s.shape, DType(s.dtype)).copy() for s in symbols}

    @functools.cached_property
    def _forward_outputs(self) -> tuple[TensorSymbol, ...]:
        """The outputs a forward kernel writes (what `evaluate` returns)."""
        forward = {b.name for k in self.pef.kernels if k.phase in FORWARD for b in k.with_role("output")}
        return tuple(s for s in self.pef.symbols.outputs if s.tensor in forward)

    def get_params(self) -> dict[str, np.ndarray]:
        """Copies of every param, buffer and optimizer state, by name."""
        return {name: self.params[name] for name in self.params}

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        """Overwrite some params or optimizer states (checked against their types)."""
        self.params.update(values)

    def _bind_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        symbols = self.inputs
        unknown = sorted(set(inputs) - set(symbols))
        if unknown:
            raise ExecutionError(f"unknown input '{unknown[0]}' (inputs: {', '.join(symbols) or 'none'})")
        missing = [name for name in symbols if name not in inputs]
        if missing:
            raise ExecutionError(f"missing input(s): {', '.join(missing)}")
        for name, symbol in symbols.items():
            array = _checked("input", symbol, inputs[name])
            self.executor.view(symbol.tensor, symbol.shape, DType(symbol.dtype))[...] = array


def param_types(pef: PEF, roles: tuple[str, ...]) -> dict[str, TensorType]:
    """The types of the PEF's params whose role is one of `roles` (param, buffer, state), by name."""
    return {p.name: TensorType(p.shape, DType(p.dtype)) for p in pef.symbols.params if p.role in roles}


def load(pef: str | os.PathLike | bytes | PEF, *, seed: int = 0, jit: Jit | None = None,
         threads: int | None = None, communicator=None) -> Program:
    """A PEF (path, bytes or record), validated, JIT-compiled and ready to run."""
    if isinstance(pef, (str, os.PathLike)):
        pef = read_pef(Path(pef))
    elif isinstance(pef, (bytes, bytearray)):
        pef = load_pef(bytes(pef))
    return Program(pef, seed=seed, jit=jit, threads=threads, communicator=communicator)
