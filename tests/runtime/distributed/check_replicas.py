"""`rduflow` under mpirun, checking after every step that every rank holds bit-identical params.

    mpirun -n 2 python tests/runtime/distributed/check_replicas.py OUT.json run PEF --data-parallel ...

Wraps `Program.run` so that after each step the ranks compare a sha256 of all their params
and optimizer state; rank 0 writes {"steps": n, "identical": [bool per step]} to OUT.json.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from mpi4py import MPI

from runtime.program import Program
from tools.cli import main

checks: list[bool] = []
plain_run = Program.run


def run_and_compare(self: Program, inputs, **kwargs):
    outputs = plain_run(self, inputs, **kwargs)
    digest = hashlib.sha256()
    for name, value in sorted(self.get_params().items()):
        digest.update(name.encode() + value.tobytes())
    digests = MPI.COMM_WORLD.allgather(digest.hexdigest())
    checks.append(len(set(digests)) == 1)
    return outputs


if __name__ == "__main__":
    Program.run = run_and_compare
    code = main(sys.argv[2:])
    if MPI.COMM_WORLD.Get_rank() == 0:
        Path(sys.argv[1]).write_text(json.dumps({"steps": len(checks), "identical": checks}))
    sys.exit(code)
