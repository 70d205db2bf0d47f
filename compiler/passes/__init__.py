"""The compiler passes, one file each, and the API to write and run passes.

    from compiler.passes import PassManager
    graph = PassManager.parse("canonicalize,cse,dce,decompose").run(graph)

Write a pass: subclass `Pass` as a frozen attrs class (its fields are its options),
decorate it with `@register_pass`, give it `name`, a docstring and `statistics`.
The machinery that runs passes lives in `compiler.pass_manager`; this package
re-exports its public names and registers the built-in passes on import.
"""
from compiler.pass_manager.base import Option, Pass, PassContext, option
from compiler.pass_manager.manager import Instrumentation, PassManager, PassRecord
from compiler.pass_manager.pipeline_syntax import format_pipeline, parse_pipeline
from compiler.pass_manager.plugins import load_pass_file
from compiler.pass_manager.registry import PASSES, lookup_pass, register_pass
from compiler.passes import canonicalize, cast_weights, cse, dce, decompose, fold_constants  # noqa: F401  (registers passes)
from compiler.passes import fuse, plan_memory, tile  # noqa: F401  (registers passes)

__all__ = ["PASSES", "Instrumentation", "Option", "Pass", "PassContext", "PassManager", "PassRecord",
           "format_pipeline", "load_pass_file", "lookup_pass", "option", "parse_pipeline", "register_pass"]
