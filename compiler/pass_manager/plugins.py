"""Passes from a user's file: `--load-pass FILE.py`.

A plugin file defines pass classes and registers them with
`compiler.passes.register_pass`. (Installed `rduflow.passes` entry points are read by
`compiler.pass_manager.registry`.)
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path

from ir.errors import Location, PassError, RduflowError

def load_pass_file(path: str | Path) -> None:
    """Import a user file that registers passes; PassError naming the file (and line) if it fails."""
    path = Path(path)
    if not path.is_file():
        raise PassError(f"pass plugin file '{path}' does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"rduflow_pass_plugin_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except RduflowError:
        raise
    except SyntaxError as err:
        raise PassError(f"syntax error in pass plugin: {err.msg}",
                        Location(str(path), err.lineno or 1, err.offset or 1)) from None
    except Exception as err:  # noqa: BLE001 - a user file's failure is a user error
        line = _line_in(path, err)
        raise PassError(f"loading pass plugin failed: {type(err).__name__}: {err}",
                        Location(str(path), line, 1)) from None


def _line_in(path: Path, err: Exception) -> int:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == path]
    return frames[-1].lineno if frames else 1
