"""A stand-in process group for running a data-parallel PEF in one process."""
from __future__ import annotations

import numpy as np


class Replicated:
    """A communicator of `size` ranks that all hold this rank's values (it counts its all-reduces)."""

    rank = 0

    def __init__(self, size: int):
        self.size = size
        self.calls = 0

    def all_reduce(self, x: np.ndarray, op: str) -> np.ndarray:
        self.calls += 1
        total = np.asarray(x, np.float32) * np.float32(self.size)
        return total / np.float32(self.size) if op == "mean" else total
