"""The text spelling of attribute and initializer values (shared by printer and parser)."""
from __future__ import annotations

import enum
import json
import math


def format_literal(value) -> str:
    """`true`, `3`, `0.02`, `-inf`, `"tanh"`, `[1, 2]`, or a dtype name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_literal(v) for v in value) + "]"
    if value is None:
        return "none"
    raise TypeError(f"no literal form for {type(value).__name__}")
