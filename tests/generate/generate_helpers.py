"""Helpers of the generation tests: the tiny checkpoints, their reference generations, programs."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from compiler.driver import CompileOptions, Compiled, compile_model
from ir.graph import Graph
from ir.interpreter import initial_params, interpret
from runtime.checkpoint import load_hf_checkpoint
from runtime.generate import DECODE, PREFILL, ProgramSteps, Prompt, limits_of, load_weights
from runtime.program import Program

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = ("gpt2-tiny", "llama-tiny")


def checkpoint(name: str) -> Path:
    return FIXTURES / "hf" / name


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "ref" / name / "expected.npz") as data:
        return dict(data)


def reference_prompts(name: str) -> list[Prompt]:
    """The fixture's three prompts (lengths 4, 7, 11)."""
    ref = expected(name)
    return [Prompt(tuple(int(t) for t in ref[f"gen_prompt_{i}"]), f"prompt {i}") for i in range(3)]


def reference_tokens(name: str) -> list[tuple[int, ...]]:
    """transformers' greedy continuations of the three prompts (12 new tokens each)."""
    ref = expected(name)
    return [tuple(int(t) for t in ref[f"gen_new_{i}"]) for i in range(3)]


def compile_generation(name: str, *overrides: str, batch_size: int = 3, weight_dtype: str = "f32") -> Compiled:
    return compile_model(CompileOptions(model=str(checkpoint(name)), overrides=overrides, inference=True,
                                        batch_size=batch_size, weight_dtype=weight_dtype))


def program_steps(result: Compiled, name: str) -> ProgramSteps:
    """The native entry points of a compiled generation PEF, weights from the checkpoint."""
    program = Program(result.pef)
    load_weights(program, checkpoint(name))
    return ProgramSteps(program)


class InterpretedSteps:
    """The prefill and decode graphs run by the reference interpreter; `params` include the caches."""

    def __init__(self, prefill: Graph, decode: Graph, params: Mapping[str, np.ndarray], max_seq_length: int):
        self.graphs = {PREFILL: prefill, DECODE: decode}
        self.params = dict(params)
        inputs = {v.name: v.type for v in prefill.inputs}
        self.limits = limits_of(inputs, prefill.outputs["logits"].type, max_seq_length)

    def run(self, name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        result = interpret(self.graphs[name], inputs, self.params)
        self.params.update(result.updates)
        return result.outputs["logits"]

    def prefill(self, input_ids, positions, lengths):
        return self.run(PREFILL, {"input_ids": input_ids, "positions": positions, "lengths": lengths})

    def decode(self, input_ids, positions):
        return self.run(DECODE, {"input_ids": input_ids, "positions": positions})


def interpreted_steps(result: Compiled, name: str) -> InterpretedSteps:
    """The reference interpreter over the optimized prefill and decode graphs, same weights."""
    prefill, decode = result.entries["prefill"], result.entries["decode"]
    params = initial_params(prefill)
    types = {p.name: p.type for p in prefill.params if p.role.value != "state"}
    params.update(load_hf_checkpoint(checkpoint(name), types).tensors)
    return InterpretedSteps(prefill, decode, params, result.config["max_seq_length"])
