"""The error hierarchy: one base, one subclass per stage.

A user's mistake raises a subclass of `RduflowError`; the CLI prints its one-line
`str()` (with location, when known) and exits 1. Anything else is an internal bug.
"""
from __future__ import annotations

import os
from pathlib import Path
import re
from typing import Callable

import attrs


@attrs.frozen
class Location:
    """A source position: `file:line:col` (1-based)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        """As shown to a user: the file as it opens from the working directory (see `display_path`)."""
        return f"{display_path(self.file)}:{self.line}:{self.col}"

    @property
    def stored(self) -> str:
        """`file:line:col` with the file as recorded (the same from any working directory)."""
        return f"{self.file}:{self.line}:{self.col}"


#: the folder holding rduflow's packages: a relative recorded file name found below it (the zoo
#: records `compiler/zoo/gpt2.rdl`) is the same in every checkout, so PEFs do not depend on where
#: rduflow is installed
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def display_path(file: str) -> str:
    """A recorded file name as a user opens it from the working directory: a file of rduflow's own
    (recorded relative to `SOURCE_ROOT`) or an absolute path is shown relative to the working
    directory when below it and absolute otherwise; any other name as recorded."""
    path = Path(file)
    if not path.is_absolute():
        if path.exists() or not (SOURCE_ROOT / path).is_file():
            return file
        path = SOURCE_ROOT / path
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)
    return str(path) if relative.startswith("..") else relative


def display_location(text: str) -> str:
    """A recorded `file:line:col` (as a PEF stores a kernel's) with its file as `display_path` shows it."""
    file, sep, rest = text.rpartition(":")
    file, sep2, line = file.rpartition(":")
    return f"{display_path(file)}:{line}:{rest}" if sep and sep2 else text


class RduflowError(Exception):
    """Base of every user-facing error; `location` and `context` are optional."""

    stage = "error"

    def __init__(self, message: str, location: Location | None = None, context: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.context = context

    def __str__(self) -> str:
        prefix = f"{self.location}: " if self.location else ""
        return f"{prefix}error: {self.message}"

    def render(self) -> str:
        """The one-line message plus, when known, the source line and a caret."""
        if self.context is None or self.location is None:
            return str(self)
        caret = " " * (self.location.col - 1) + "^"
        return f"{self}\n{self.context}\n{caret}"


class IRError(RduflowError):
    """Malformed IR text or an IR graph that fails verification."""


class ParseError(IRError):
    """IR text that does not parse."""


class VerifyError(IRError):
    """A graph that breaks an IR rule."""


class FrontendError(RduflowError):
    """A mistake in an RDL model source."""


class ConfigError(RduflowError):
    """A bad configuration value, override or option."""


class PassError(RduflowError):
    """A bad pass pipeline or pass option."""


class BackendError(RduflowError):
    """A program that cannot be mapped onto the target."""


class PEFError(RduflowError):
    """A PEF file that is missing, corrupted, or of the wrong version."""


class ExecutionError(RduflowError):
    """Bad inputs to a program run."""


class DataError(RduflowError):
    """Bad training data or data-prep input."""


class CheckpointError(RduflowError):
    """A checkpoint that is missing, malformed, or does not match the model."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def config_error(err: Exception, label: Callable[[str], str] = str, show_input: bool = False) -> ConfigError:
    """The ConfigError of a pydantic `ValidationError`'s first error: `label(field): message`.

    The message starts lower-case, without pydantic's "Value error, " prefix. A model-level
    rule's message reads "field: needs other" and both names go through `label`; `show_input`
    appends the value refused, "(got 0.0)". Takes the error object, so `ir` needs no pydantic.
    """
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if first["loc"]:
        field = str(first["loc"][0])
    elif ": " in message:
        field, message = message.split(": ", 1)
        message = re.sub(r"\w+$", lambda m: label(m.group()), message)
    else:
        field = "options"
    got = f" (got {first['input']!r})" if show_input else ""
    return ConfigError(f"{label(field)}: {message[:1].lower()}{message[1:]}{got}")
