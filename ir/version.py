"""rduflow's version, as installed (recorded in every PEF and shown by `rduflow --version`)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def tool_version() -> str:
    try:
        return version("rduflow")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0+unknown"
