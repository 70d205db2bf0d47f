"""Stage kinds: one declaration each, as ops have one in `ir.ops`.

A kernel program's `stages` run in order; each writes one buffer (`out`) completely and reads
only kernel inputs and buffers written by earlier stages. A stage kind's declaration is an
attrs record subclassing `StageKind` (`base.py`), decorated with `@declare`, holding:

* its record fields (what the PEF stores; the schema encodes them with the `kind` tag);
* `check`: its validation against the kernel's buffers (through `backend.pef.validate`);
* `loop_nest` / `contracted`: the loop nest its schedule tiles (the result's axes, then
  contracted ones) and which axes are contracted;
* `work`: the element operations it performs (threading decisions, the PEF reader's bounds);
* `reference`: its numpy semantics (the oracle `backend.pef.reference.run_kernel` runs);
* `ops` and `lower`: the IR ops that become this stage, and how (from the parameters of
  the op's `stage` hook);
* mapping needs: `has_core`, `tile_elements`; `on_host` for stages the runtime runs on the host.

The runtime registers how it runs each kind against the same declaration, in one table
(`runtime/jit/kernel.py`: `LOWERINGS`; `on_host` kinds run in `runtime/executor.py`).

Adding a stage kind:
1. Declare it in the family module it belongs to here (or a new one imported below): the
   record, `check`, `reference`, `lower`, and whichever defaults of `StageKind` it overrides.
2. List the IR ops it implements in `ops`; each gives `lower` its parameters through its
   `stage` hook (`ir/ops`).
3. Write its native lowering in `runtime/jit/` and add it to `LOWERINGS` (or set `on_host`).
4. Test: the validator's errors, the reference against the IR interpreter, the JIT against
   the reference (tests/backend, tests/runtime/jit).
No other code names a stage kind.
"""
from typing import Union

from backend.pef.stages.base import STAGE_KINDS, STAGE_OF_OP, StageKind, strided_elements
from backend.pef.stages.collective import AllReduceStage
from backend.pef.stages.conv import Conv2dInputGradStage, Conv2dStage, Conv2dWeightGradStage
from backend.pef.stages.elementwise import LiteralStage, MapStage
from backend.pef.stages.gemm import GemmStage
from backend.pef.stages.indexing import DynamicSliceStage, GatherStage, ScatterAddStage, UpdateSliceStage
from backend.pef.stages.layout import ConcatStage, PadStage
from backend.pef.stages.pool import Pool2dGradStage, Pool2dStage
from backend.pef.stages.reduce import ReduceStage

#: any declared stage (the schema decodes a stage by its `kind` tag)
Stage = Union[tuple(STAGE_KINDS[kind] for kind in sorted(STAGE_KINDS))]

__all__ = ["STAGE_KINDS", "STAGE_OF_OP", "Stage", "StageKind", "strided_elements", "AllReduceStage", "ConcatStage", "Conv2dInputGradStage",
           "Conv2dStage", "Conv2dWeightGradStage", "DynamicSliceStage", "GatherStage", "GemmStage",
           "LiteralStage", "MapStage", "PadStage", "Pool2dGradStage", "Pool2dStage", "ReduceStage",
           "ScatterAddStage", "UpdateSliceStage"]
