"""The RDL frontend: model text (`*.rdl`) to a forward IR graph.

    module = parse_module(Source.read("model.rdl"))
    values = compiler.config.resolve(module.schema, settings)
    graph = lower(module, values, training=True)

`build` does the three steps. Errors are `FrontendError`/`ConfigError` with a
`file:line:col` and the source line.
"""
from __future__ import annotations

from typing import Sequence

from compiler.config import Setting, resolve
from compiler.frontend.lower import Module, lower, parse_module
from compiler.frontend.source import Source
from ir.graph import Graph

__all__ = ["Module", "Source", "build", "lower", "parse_module"]


def build(source: Source, settings: Sequence[Setting] = (), training: bool = True) -> Graph:
    """Parse, resolve the config with `settings`, and lower."""
    module = parse_module(source)
    return lower(module, resolve(module.schema, settings), training)
