"""What a stage declaration is: its record fields plus the methods below, with the defaults most kinds take."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from backend.pef.records import Access, Body, Buffer

if TYPE_CHECKING:
    import numpy as np

#: stage kind -> its declaration, in the order the kinds were declared
STAGE_KINDS: dict[str, type[StageKind]] = {}


#: IR op name -> the declaration of the stage it lowers to
STAGE_OF_OP: dict[str, type[StageKind]] = {}


def declare(cls: type[StageKind]) -> type[StageKind]:
    """Class decorator: register a stage kind's declaration (an attrs record subclassing `StageKind`)."""
    if cls.kind in STAGE_KINDS:
        raise ValueError(f"stage kind '{cls.kind}' is declared twice")
    STAGE_KINDS[cls.kind] = cls
    for op in cls.ops:
        if op in STAGE_OF_OP:
            raise ValueError(f"op '{op}' lowers to two stage kinds")
        STAGE_OF_OP[op] = cls
    return cls


def strided_elements(tile: tuple[int, ...], access: Access) -> int:
    """Elements of a strided operand one tile touches (axes it does not move along count once)."""
    return math.prod(t for t, s in zip(tile, access.strides) if s)


class StageKind:
    """One stage kind: an attrs record whose first field is `out` (the buffer it writes whole).

    Subclasses set `kind` and implement `check`, `reference` and `lower`; the other methods
    have the defaults of a stage that iterates over its output's elements."""

    kind: ClassVar[str]
    #: the IR ops lowered to this stage (through `lower`, with the parameters of the op's `stage` hook)
    ops: ClassVar[tuple[str, ...]] = ()
    #: the runtime runs it on the host (a collective), not as native code
    on_host: ClassVar[bool] = False
    #: it may write a block-quantized buffer (by copying whole blocks)
    writes_blocks: ClassVar[bool] = False
    #: mapping: a compute core (one PCU pipeline stage) besides its expression nodes
    has_core: ClassVar[bool] = True
    out: str

    # --- the loop nest (what a schedule tiles) ------------------------------------------------
    def loop_nest(self, out_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Extents of the loop nest: the result's axes, then contracted ones."""
        return tuple(out_shape)

    def contracted(self, rank: int) -> tuple[int, ...]:
        """The contracted axes of a loop nest of `rank` axes."""
        return ()

    def work(self, buffers: dict[str, Buffer]) -> int:
        """Element operations the stage performs (at least one per loop iteration): what decides
        whether threads pay off, and what the PEF reader bounds."""
        return buffers[self.out].size

    # --- the contract -----------------------------------------------------------------------
    def check(self, v: Any, where: str, out: Buffer) -> str:
        """Validate against the kernel's buffers through the checker `v` (`backend.pef.validate`);
        returns the dtype the stage computes."""
        raise NotImplementedError

    def reference(self, r: Any, out: Buffer) -> np.ndarray:
        """The stage's value in numpy, reading operands through `r` (`backend.pef.reference.Store`)."""
        raise NotImplementedError

    def reads(self) -> list[Access]:
        """Every read of the stage, bodies and epilogues included."""
        found: list[Access] = []
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, Access):
                    found.append(item)
                elif isinstance(item, Body):
                    found.extend(item.reads)
        return found

    def placed(self, buffers: dict[str, Buffer]) -> tuple[StageKind, dict[str, int], dict[str, int]]:
        """The stage once the memory plan has bound its buffers, and the bytes per tier it then no
        longer reads and writes (a stage may work in place when its output shares an operand's range)."""
        return self, {}, {}

    # --- the compiler's side ------------------------------------------------------------------
    @classmethod
    def lower(cls, k: Any, op: Any, **params: Any) -> StageKind:
        """The stage of IR op `op` (one of `ops`; its `stage` hook gave `params`) in kernel lowering state `k`
        (`backend.lowering`: `target(value)`, `operand_access(value, widened=False)`, `error`)."""
        raise NotImplementedError

    def tile_elements(self, tile: tuple[int, ...], access: Access) -> int:
        """Mapping: elements of `access`'s tensor one tile of the loop nest touches."""
        return strided_elements(tile, access)
