"""Shared helpers of the training tests: compiled fixtures, data files, an interpreter-backed program."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import h5py
import numpy as np

from backend.pef.file import PEF
from compiler.driver import CompileOptions, compile_model
from compiler.training import TrainingOptions
from ir.graph import Graph
from ir.interpreter import initial_params, interpret

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
#: the optimizer of the fine-tuning fixtures (tests/fixtures/README.md)
FIXTURE_TRAINING = TrainingOptions(optimizer="adamw", weight_decay=0.01, max_grad_norm=1.0)


def compile_training(model: str, training: TrainingOptions = FIXTURE_TRAINING, overrides: tuple[str, ...] = (),
                     target: str = "sn40l") -> tuple[PEF, Graph]:
    """A training PEF of `model` and the optimized graph it was built from."""
    compiled = compile_model(CompileOptions(model, overrides, training=training, target=target))
    return compiled.pef, compiled.graph


class InterpretedProgram:
    """A training program run by the reference interpreter (the oracle), as the trainer drives one."""

    def __init__(self, pef: PEF, graph: Graph):
        self.pef = pef
        self.graph = graph
        self.params = initial_params(graph)

    def initialize(self, seed: int) -> None:
        self.params = initial_params(self.graph, seed)

    def step(self, inputs: Mapping[str, np.ndarray], *, outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        result = interpret(self.graph, inputs, self.params)
        self.params.update(result.updates)
        return _named(result.outputs, outputs)

    def evaluate(self, inputs: Mapping[str, np.ndarray], *,
                 outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        return _named(interpret(self.graph, inputs, self.params).outputs, outputs)

    def get_params(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self.params.items()}

    def set_params(self, values: Mapping[str, np.ndarray]) -> None:
        unknown = set(values) - set(self.params)
        assert not unknown, unknown
        self.params.update({k: np.array(v, dtype=self.params[k].dtype) for k, v in values.items()})


def _named(outputs: dict[str, np.ndarray], names: Iterable[str] | None) -> dict[str, np.ndarray]:
    return outputs if names is None else {name: outputs[name] for name in names}


def write_tokens(path: Path, input_ids: np.ndarray, token_type_ids: np.ndarray) -> Path:
    """One HDF5 file of token rows, as data-prep writes them."""
    with h5py.File(path, "w") as f:
        f.create_dataset("input_ids", data=np.asarray(input_ids, np.int32))
        f.create_dataset("token_type_ids", data=np.asarray(token_type_ids, np.int32))
    return path


def finetune_batches(model: str) -> dict[str, np.ndarray]:
    """The fixture's 5 fine-tuning batches of 2 rows, flattened to 10 rows in step order, and its losses."""
    with np.load(FIXTURES / "ref" / model / "finetune.npz") as z:
        return {"input_ids": z["input_ids"].reshape(-1, z["input_ids"].shape[-1]),
                "token_type_ids": z["token_type_ids"].reshape(-1, z["token_type_ids"].shape[-1]),
                "losses": z["losses"], "grad_norms": z["grad_norms"]}


def random_tokens(path: Path, rows: int, seq: int = 16, vocab: int = 128, seed: int = 0) -> Path:
    """Rows of a prompt (type 0), a completion (type 1) and padding (type 2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, seq), dtype=np.int32)
    types = np.full((rows, seq), 2, np.int32)
    for row in range(rows):
        prompt, completion = rng.integers(2, 6), rng.integers(3, 8)
        types[row, :prompt], types[row, prompt:prompt + completion] = 0, 1
    return write_tokens(path, ids, types)
