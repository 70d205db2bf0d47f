"""The backend's entry points for tests that build graphs by hand, given the plan-memory pass's plan
for their target first, as the compile driver does (the backend refuses a graph without one)."""
from __future__ import annotations

from backend import driver
from backend.driver import BackendOptions
from backend.pef.file import PEF
from backend.pef.targets import load_target
from compiler.passes.plan_memory import with_memory_plan
from ir.graph import Graph


def build_pef(graph: Graph, options: BackendOptions) -> PEF:
    return driver.build_pef(with_memory_plan(graph, options.target, pack=options.pack), options)


def compile_program(graph: Graph, options: BackendOptions) -> bytes:
    return build_pef(graph, options).to_bytes()


def backend_stage(graph: Graph, *, target: str, pack: bool = True, **kw) -> PEF:
    return driver.backend_stage(with_memory_plan(graph, load_target(target), pack=pack), target=target, pack=pack,
                                **kw)
