"""What the host offers the matrix kernels: its vector registers and its caches.

The vector width and register count come from LLVM's host CPU features (AVX-512: 32
registers of 16 f32 lanes; AVX/AVX2: 16 of 8; else SSE's 16 of 4), the cache sizes
from the OS (`/sys/devices/system/cpu/cpu0/cache`), with common sizes where it does
not tell. `Tile` turns them into the gemm's register tile and cache blocks.
"""
from __future__ import annotations

import functools
from pathlib import Path

import attrs
import llvmlite.binding as llvm

from ir.dtypes import BLOCK

#: (level 1 data, level 2, level 3) bytes assumed where the OS does not say
FALLBACK_CACHES = (32 << 10, 512 << 10, 8 << 20)
#: depth steps per iteration of the micro-kernel's loop (the depth block is a multiple)
UNROLL = 4
#: the widest packed B panel, in columns (beyond it a panel's rows stop fitting a TLB's reach)
NC_MAX = 4096
_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")


@attrs.frozen
class Tile:
    """A gemm micro-kernel's shape and the cache blocks around it: an `mr` x `nr` tile of C in
    registers of `lanes` f32, summed over depth blocks of `kc`; packed A blocks of `mc` rows,
    packed B panels of `nc` columns."""

    lanes: int
    mr: int
    nr: int
    kc: int
    mc: int
    nc: int

    def narrow(self) -> Tile | None:
        """Beside a tile three vectors wide, the one two vectors wide with half as many rows again
        (as many accumulators, its blocks rounded to it): C's columns pad to two vectors, not three."""
        if self.nr != 3 * self.lanes or self.mr % 2:
            return None
        mr, nr = self.mr * 3 // 2, 2 * self.lanes
        return Tile(self.lanes, mr, nr, self.kc, max(mr, self.mc // mr * mr), max(nr, self.nc // nr * nr))


def tile_for(lanes: int, registers: int, caches: tuple[int, int, int] = FALLBACK_CACHES) -> Tile:
    """The tile for `registers` vector registers of `lanes` f32 and (L1d, L2, L3) bytes.

    With 16 registers (AVX2: 6 x 16), two vectors of columns and as many rows as leave registers
    for their 2 x `mr` accumulators, the two B vectors and a broadcast A element. With 32
    (AVX-512: 8 x 48), three vectors of columns and 8 rows: on a 48 KB-L1 AVX-512 core level
    with 14 x 32 on square products and 12-35% faster on a prefill's 32-row ones, which 14 rows
    divide badly. A packed B sliver (`kc` x `nr`) takes half of L1 with 8 lanes; with 16, an
    eighth of L2, `kc` a multiple of 32 (the blocks of quantized weights). Each block of depth
    reads and writes C once more: on a 2 MB-L2 core, blocks of 768-1536 ran a training step's
    products 2-8% faster than L1-sized ones of 256 (which ran 2048^3 at 178-191 GFLOP/s a core
    where 128 ran 155-158). The packed A block takes half of L2, the packed B panel half of L3."""
    l1, l2, l3 = caches
    nr, mr = (3 * lanes, 8) if registers >= 32 else (2 * lanes, (registers - 3) // 2)
    if lanes >= 16:
        kc = max(UNROLL, l2 // 8 // (4 * nr) // BLOCK * BLOCK)
    else:
        kc = max(UNROLL, l1 // 2 // (4 * nr) // UNROLL * UNROLL)
    mc = max(mr, l2 // 2 // (4 * kc) // mr * mr)
    nc = max(nr, min(NC_MAX, l3 // 2 // (4 * kc)) // nr * nr)
    return Tile(lanes, mr, nr, kc, mc, nc)


def vector_registers(features: str) -> tuple[int, int]:
    """(f32 lanes, register count) of the widest vector unit in an LLVM feature string."""
    enabled = {f[1:] for f in features.split(",") if f.startswith("+")}
    if "avx512f" in enabled:
        return 16, 32
    if "avx" in enabled:
        return 8, 16
    return 4, 16


def _size(text: str) -> int:
    """'32K', '1M', '512' as bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def cache_sizes(directory: Path = _CACHE_DIR) -> tuple[int, int, int]:
    """(L1 data, L2, L3) bytes of the first CPU; a fallback for each level the OS does not list."""
    found: dict[int, int] = {}
    for index in sorted(directory.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and size > 0:
            found.setdefault(level, size)
    return tuple(found.get(level, fallback) for level, fallback in zip((1, 2, 3), FALLBACK_CACHES))


@functools.cache
def host_tile() -> Tile:
    """The gemm tile for this host's vector registers and caches."""
    llvm.initialize_native_target()
    return tile_for(*vector_registers(llvm.get_host_cpu_features().flatten()), cache_sizes())
