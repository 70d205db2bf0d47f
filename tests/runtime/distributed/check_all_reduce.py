"""Run under mpirun: `MpiCommunicator.all_reduce` gives every rank the same bits, the f32 sum in
rank order (and the mean), for arrays of any shape, including ones shorter than the group."""
from __future__ import annotations

import sys

import numpy as np

from runtime.distributed import MpiCommunicator

comm = MpiCommunicator()
rng = np.random.default_rng(comm.rank)
for shape in [(), (2,), (3, 7), (1001,)]:
    x = rng.standard_normal(shape).astype(np.float32)
    everyone = comm.comm.allgather(x)
    want = everyone[0].copy()
    for other in everyone[1:]:
        want += other
    got = comm.all_reduce(x, "sum")
    assert got.dtype == np.float32 and got.shape == x.shape and np.array_equal(got, want), shape
    assert np.array_equal(comm.all_reduce(x, "mean"), want / np.float32(comm.size)), shape
    assert len(set(comm.comm.allgather(got.tobytes()))) == 1, shape
sys.stdout.write(f"rank {comm.rank} ok\n")
