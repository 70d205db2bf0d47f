"""The pass base class, its options and statistics.

A pass is a small frozen class (attrs or dataclass) whose typed fields are its
options: `fuse{max-ops=32}` sets the field `max_ops: int`. It declares `name`,
a one-line docstring, its statistic counters, and `run(graph, ctx) -> Graph`.
Register it with `@register_pass` (`compiler.pass_manager.registry`).
"""
from __future__ import annotations

import dataclasses
import typing
from collections import Counter
from typing import Any, ClassVar

import attrs

from ir.graph import Graph


@attrs.define
class PassContext:
    """What a running pass may use: its statistic counters and the compile target."""

    pass_: Pass
    counters: Counter = attrs.field(factory=Counter)
    #: the compile's `--target` (a preset name or YAML file), None outside a compile;
    #: passes with a `target` option (tile, plan-memory) default to it
    target: str | None = None

    def count(self, statistic: str, n: int = 1) -> None:
        """Add `n` to one of the running pass's declared statistics."""
        if statistic not in self.pass_.statistics:
            raise KeyError(f"pass '{self.pass_.name}' declares no statistic '{statistic}'")
        self.counters[f"{self.pass_.name}.{statistic}"] += n


class Pass:
    """Base of every pass. Subclasses are frozen attrs classes or dataclasses.

    `run` may change `graph` in place; it returns the resulting graph (the same
    object or a new one). The pass manager verifies the result.
    """

    #: the name used in pipelines: lower-case words joined by dashes
    name: ClassVar[str]
    #: statistic name -> what it counts; `ctx.count(name)` bumps one
    statistics: ClassVar[dict[str, str]] = {}
    #: whether the pass changes param types (stores weights narrower): the program then means
    #: what the input program means with its params rounded to the new types
    retypes_params: ClassVar[bool] = False

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        raise NotImplementedError

    @classmethod
    def doc(cls) -> str:
        """The first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def options(cls) -> dict[str, Option]:
        """Pipeline option name (dashes) -> its declaration, in field order."""
        return {opt.name: opt for opt in declared_options(cls)}

    def spec(self) -> str:
        """The pipeline text of this pass: its name and options that differ from defaults."""
        changed = [f"{o.name}={o.format(getattr(self, o.field))}" for o in declared_options(type(self))
                   if getattr(self, o.field) != o.default]
        return self.name + ("{" + " ".join(changed) + "}" if changed else "")


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@attrs.frozen
class Option:
    """One option of a pass: its pipeline name, field, type and default."""

    name: str
    field: str
    type: type
    default: Any
    help: str = ""

    def parse(self, text: str) -> Any:
        """The option value from pipeline text; ValueError with the expected form."""
        if self.type is bool:
            if text.lower() not in _BOOLS:
                raise ValueError(f"option '{self.name}' expects true or false, got '{text}'")
            return _BOOLS[text.lower()]
        try:
            return self.type(text)
        except ValueError:
            raise ValueError(f"option '{self.name}' expects {self.type.__name__}, got '{text}'") from None

    def format(self, value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)


def _fields(cls: type) -> list[tuple[str, Any, str]]:
    if attrs.has(cls):
        return [(f.name, f.default, f.metadata.get("help", "")) for f in attrs.fields(cls)]
    if dataclasses.is_dataclass(cls):
        return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)]
    return []


def declared_options(cls: type) -> list[Option]:
    hints = typing.get_type_hints(cls)
    out = []
    for field, default, help_ in _fields(cls):
        kind = hints.get(field)
        if kind not in (int, float, bool, str):
            raise TypeError(f"pass option '{field}' of '{cls.__name__}' must be int, float, bool or str")
        if default is attrs.NOTHING or default is dataclasses.MISSING:
            raise TypeError(f"pass option '{field}' of '{cls.__name__}' needs a default")
        out.append(Option(field.replace("_", "-"), field, kind, default, help_))
    return out


def option(default: Any, help: str) -> Any:
    """An attrs field for a pass option with its help text: `max_ops: int = option(32, "...")`."""
    return attrs.field(default=default, metadata={"help": help})
