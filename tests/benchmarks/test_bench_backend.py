"""Backend speed on a GPT-2 training graph: lowering to a PEF, and reading it back
(run with --benchmark-enable)."""
from __future__ import annotations

import pytest

from backend.driver import BackendOptions, build_pef
from backend.pef.file import load_pef
from backend.pef.targets import load_target
from compiler import zoo
from compiler.config import Setting
from compiler.frontend import build
from compiler.pass_manager.levels import level_pipeline
from compiler.passes import PassManager
from compiler.training import build_training_graph
from ir.parser import parse
from ir.printer import print_graph


@pytest.fixture(scope="module")
def gpt2_o0_text() -> str:
    forward = build(zoo.source("gpt2"), [Setting("n_layer", 4, "benchmark")], training=True)
    return print_graph(PassManager.parse(level_pipeline("O0")).run(build_training_graph(forward)))


@pytest.mark.parametrize("pack", [False, True], ids=["O0", "packed"])
def test_bench_compile_program(benchmark, gpt2_o0_text, pack):
    options = BackendOptions(load_target("sn40l"), pack=pack)
    pef = benchmark.pedantic(lambda graph: build_pef(graph, options).to_bytes(),
                             setup=lambda: ((parse(gpt2_o0_text),), {}), rounds=3)
    assert len(pef) > 100_000


def test_bench_load_pef(benchmark, gpt2_o0_text):
    data = build_pef(parse(gpt2_o0_text), BackendOptions(load_target("sn40l"))).to_bytes()
    pef = benchmark.pedantic(load_pef, args=(data,), rounds=3)
    assert len(pef.kernels) > 1000
