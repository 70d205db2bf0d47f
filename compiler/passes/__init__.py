"""Compiler passes: the pass base class, registry, pipelines and pass manager.

    from compiler.passes import PassManager
    graph = PassManager.parse("canonicalize,cse,dce,decompose").run(graph)

Write a pass: subclass `Pass` as a frozen attrs class (its fields are its options),
decorate it with `@register_pass`, give it `name`, a docstring and `statistics`.
"""
from compiler.passes import canonicalize, cast_weights, cse, dce, decompose, fold_constants  # noqa: F401  (registers passes)
from compiler.passes import fuse, plan_memory, tile  # noqa: F401  (registers passes)
from compiler.passes.base import PASSES, Option, Pass, PassContext, lookup_pass, option, register_pass
from compiler.passes.manager import Instrumentation, PassManager, PassRecord
from compiler.passes.pipeline import format_pipeline, parse_pipeline
from compiler.passes.plugins import load_pass_file

__all__ = ["PASSES", "Instrumentation", "Option", "Pass", "PassContext", "PassManager", "PassRecord",
           "format_pipeline", "load_pass_file", "lookup_pass", "option", "parse_pipeline", "register_pass"]
