"""The `target` option of target-dependent passes (tile, plan-memory)."""
from __future__ import annotations

from backend.pef.targets import Target, load_target
from compiler.pass_manager.base import PassContext
from ir.errors import ConfigError, PassError

#: the target when neither the pass option nor the compile gives one (`rduflow compile`'s default)
DEFAULT_TARGET = "sn40l"


def resolve_target(option: str, ctx: PassContext | None) -> Target:
    """The pass's `target` option, else the compile's `--target`, else the default; PassError if unknown."""
    spec = option or (ctx.target if ctx is not None else None) or DEFAULT_TARGET
    try:
        return load_target(spec)
    except ConfigError as err:
        raise PassError(f"option 'target': {err.message}") from None
