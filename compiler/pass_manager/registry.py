"""The pass registry: pass name -> pass class.

Built-in passes register on import (`compiler.passes`), a `--load-pass` file when it is
loaded, and installed packages through the `rduflow.passes` entry points: each names a
module (which registers its passes on import) or a pass class (registered if it is not yet).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from importlib.metadata import entry_points

import attrs

from compiler.pass_manager.base import Pass, declared_options
from ir.errors import PassError

ENTRY_POINT_GROUP = "rduflow.passes"
_entry_points_loaded = False

#: every registered pass, by name
PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator adding a pass to the registry (built-in passes and plugins alike)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PassError(f"pass class '{cls.__name__}' has no name")
    if not (attrs.has(cls) or dataclasses.is_dataclass(cls)):
        raise PassError(f"pass '{name}' must be an attrs or dataclass class (its fields are its options)")
    old = PASSES.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise PassError(f"pass '{name}' is already registered by {old.__module__}.{old.__qualname__}")
    try:
        declared_options(cls)
    except TypeError as err:
        raise PassError(str(err)) from None
    PASSES[name] = cls
    return cls


def lookup_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`, or PassError naming the closest ones."""
    load_entry_points()
    if name not in PASSES:
        raise PassError(f"unknown pass '{name}'{suggest(name, PASSES)}")
    return PASSES[name]


def suggest(name: str, known: typing.Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest known names, or an empty string."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def load_entry_points() -> None:
    """Load the installed `rduflow.passes` entry points (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            loaded = ep.load()
        except Exception as err:  # noqa: BLE001 - a broken plugin is reported, not a crash
            raise PassError(f"pass plugin entry point '{ep.name}' ({ep.value}) failed to load: "
                            f"{type(err).__name__}: {err}") from None
        if isinstance(loaded, type) and issubclass(loaded, Pass) and PASSES.get(loaded.name) is not loaded:
            register_pass(loaded)
