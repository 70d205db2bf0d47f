"""The model zoo: RDL models shipped with rduflow, compiled by name (`rduflow compile gpt2`)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from compiler.frontend.source import Source
from ir.errors import SOURCE_ROOT


def names() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(f.name[:-4] for f in resources.files(__package__).iterdir() if f.name.endswith(".rdl"))


def source(name: str) -> Source:
    """The RDL source of zoo model `name` (KeyError if there is none); its locations record the file's
    path below rduflow's source root (`compiler/zoo/gpt2.rdl`, the same in every checkout), which
    `ir.errors.display_path` shows as an editor opens it from the working directory."""
    if name not in names():
        raise KeyError(name)
    path = resources.files(__package__).joinpath(f"{name}.rdl")
    return Source(path.read_text(encoding="utf-8"), Path(str(path)).resolve().relative_to(SOURCE_ROOT).as_posix())
