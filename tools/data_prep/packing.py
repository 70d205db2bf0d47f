"""Packing token units into fixed-length rows, as SambaNova generative_data_prep does.

``full`` concatenates everything and cuts it into rows; ``single`` puts one unit per
row; ``greedy`` puts as many whole units in a row as fit. A unit longer than the
space it gets is truncated on the left or right, or dropped, as the ``::`` suffix
says. Rows are padded: each field with its own filler (pad id, type 2, category -1).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Packer:
    """Packs units of token fields (shape (fields, n)) into rows; keeps an unfinished row between calls."""

    style: str
    overflow: str | None
    length: int
    fillers: tuple[int, ...]
    tokens_dropped: int = 0
    units_truncated: int = 0
    units_dropped: int = 0
    _pending: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._pending = np.zeros((len(self.fillers), 0), np.int32)

    def add(self, fields: np.ndarray, unit_lens: np.ndarray) -> np.ndarray:
        """The rows (shape (fields, rows, length)) completed by these units."""
        if self.style == "full":
            return self._add_full(fields)
        placement, rows, fill = self._place(unit_lens.tolist())
        out = self._scatter(fields, unit_lens, placement, rows + 1)
        self._pending = out[:, rows, :fill].copy()
        return out[:, :rows]

    def flush(self) -> np.ndarray:
        """The last unfinished row, padded (none if nothing is pending)."""
        out = self._empty_rows(1 if self._pending.shape[1] else 0)
        if out.shape[1]:
            out[:, 0, :self._pending.shape[1]] = self._pending
        self._pending = self._pending[:, :0]
        return out

    def _add_full(self, fields: np.ndarray) -> np.ndarray:
        fields = np.concatenate([self._pending, fields], axis=1)
        rows = fields.shape[1] // self.length
        cut = rows * self.length
        self._pending = fields[:, cut:]
        return fields[:, :cut].reshape(len(self.fillers), rows, self.length)

    def _place(self, lens: list[int]) -> tuple[list[tuple[int, int, int, int]], int, int]:
        """Per unit (row, column, first kept token, kept tokens); rows completed; fill of the last."""
        greedy = self.style == "greedy"
        row, fill = 0, self._pending.shape[1]
        placement: list[tuple[int, int, int, int]] = []
        for n in lens:
            if greedy and fill + n <= self.length:
                placement.append((row, fill, 0, n))
                fill += n
                continue
            if fill:
                row, fill = row + 1, 0
            skip, keep = self._fit(n)
            placement.append((row, 0, skip, keep))
            fill = keep
            if not greedy and keep:
                row, fill = row + 1, 0
        return placement, row, fill

    def _fit(self, n: int) -> tuple[int, int]:
        """(first kept token, kept tokens) of a unit of `n` tokens in an empty row."""
        if n <= self.length:
            return 0, n
        kept = 0 if self.overflow == "drop" else self.length
        self.tokens_dropped += n - kept
        if kept:
            self.units_truncated += 1
        else:
            self.units_dropped += 1
        return (n - kept if self.overflow == "truncate_left" else 0), kept

    def _scatter(self, fields: np.ndarray, lens: np.ndarray, placement: list[tuple[int, int, int, int]],
                 num_rows: int) -> np.ndarray:
        out = self._empty_rows(num_rows)
        out[:, 0, :self._pending.shape[1]] = self._pending
        starts = (np.cumsum(lens) - lens).tolist()
        for (row, col, skip, keep), start in zip(placement, starts):
            out[:, row, col:col + keep] = fields[:, start + skip:start + skip + keep]
        return out

    def _empty_rows(self, n: int) -> np.ndarray:
        out = np.empty((len(self.fillers), n, self.length), np.int32)
        out[:] = np.array(self.fillers, np.int32)[:, None, None]
        return out
