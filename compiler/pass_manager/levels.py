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
        # memory reuse at every level: it changes where tensors live, not what runs; with one
        # op per section nothing can stay on chip between kernels
        "plan-memory{onchip-max-bytes=0}",
    ],
    # fusion
    "O1": [
        *_CLEANUP,
        "decompose",
        "canonicalize", "cse", "dce",
        "fuse",
        "plan-memory",
    ],
    # fusion + tiling + whole-graph sectioning
    "O3": [
        *_CLEANUP,
        "decompose",
        "canonicalize", "cse", "dce",
        "fuse",
        "tile",
        "plan-memory",
    ],
}


def level_pipeline(level: str) -> str:
    """The pipeline text of an optimization level (`O0`, `O1`, `O3`)."""
    return ",".join(PIPELINES[level])
