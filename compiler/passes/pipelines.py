"""Named pipelines of the optimization levels: `-O0`, `-O1`, `-O3`.

Each level is a list of pass specs; a new pass joins a level with one line.
"""
from __future__ import annotations

#: the cleanup passes run before and after composite ops are expanded
_CLEANUP = ["canonicalize", "fold-constants", "cse", "dce"]

PIPELINES: dict[str, list[str]] = {
    # one op per section, as SambaFlow's o0: only what the backend requires
    "O0": [
        "decompose",
    ],
    # fusion
    "O1": [
        *_CLEANUP,
        "decompose",
        "canonicalize", "cse", "dce",
    ],
    # fusion + tiling + whole-graph sectioning
    "O3": [
        *_CLEANUP,
        "decompose",
        "canonicalize", "cse", "dce",
    ],
}


def level_pipeline(level: str) -> str:
    """The pipeline text of an optimization level (`O0`, `O1`, `O3`)."""
    return ",".join(PIPELINES[level])
