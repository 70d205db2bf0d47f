"""Data-parallel training across processes: one replica per MPI rank.

    mpirun -n 2 rduflow run model.pef --data-parallel --data prepared/ ...

MPI is the engine (`mpi4py`; the `mpich` wheel brings `mpirun`); this module is
the rest:

* `Communicator`: what the runtime asks of the process group. `MpiCommunicator`
  wraps `MPI.COMM_WORLD`. Its `all_reduce` (a PEF's `all_reduce` stages, run by
  the executor) adds in f32 in rank order, each part of the array on one rank,
  and shares the sums, so every rank holds bit-identical results that do not
  depend on timing.
* `Replicas`: a rank's view of its group for the training loop. Each global step
  takes the rows a single process with batch `world_size * B` would take (same
  order, same shuffle from the same seed); rank r takes the r-th B of them. Its
  share of the loss weight (completion tokens, or rows) goes to the program's
  `replica_weight` input, and the logged loss is the weighted sum over the ranks:
  the mean over the global batch's completion tokens. Evaluation batches are
  split like training batches and their sums reduced. Rank 0 writes (logs, metrics,
  checkpoints); every rank reads the checkpoints to resume.
* `check_launch`: the PEF, the launch and the data agree on every rank, or every
  rank stops with the same clear error.
* `run_replica`: a rank's failure ends the whole job with its message (MPI_Abort)
  instead of leaving the other ranks waiting in a collective.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from backend.pef.file import PEF
from ir.errors import ExecutionError
from runtime.jit.parallel import default_threads

#: environment variables an MPI launcher sets in the processes it starts (MPICH/Hydra, Open MPI, PMIx)
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
#: the program input taking a replica's share of the global batch's loss weight (`compiler.training`)
REPLICA_WEIGHT = "replica_weight"
#: step outputs that are means over a replica's batch: combined over the group weighted by the shares
WEIGHTED_OUTPUTS = ("loss", "accuracy")
#: bytes read from each end of a data file for its fingerprint
FINGERPRINT_BYTES = 1 << 20
#: seconds a failing rank waits after printing its message, before MPI_Abort: mpiexec ends the job
#: on the abort and can drop output its proxies have not forwarded yet, that message among it
ABORT_GRACE = 0.5


class Communicator(Protocol):
    """A group of processes: this one's rank, the group's size, and the collectives the runtime uses."""

    rank: int
    size: int

    def all_reduce(self, x: np.ndarray, op: str) -> np.ndarray:
        """The sum (op "sum") or mean ("mean") of `x` over the ranks, in f32, the same bits on every rank."""

    def allgather(self, value: object) -> list:
        """Every rank's `value`, in rank order."""

    def barrier(self) -> None: ...

    def abort(self, code: int) -> None:
        """End every process of the group."""


class MpiCommunicator:
    """`MPI.COMM_WORLD` (mpi4py). A reduction splits the array into one chunk per rank; rank r
    receives every rank's r-th chunk (all-to-all), adds them in rank order, and all ranks gather
    the sums: each element is added in the same order whatever the timing, by one rank, so
    every rank gets the same bits, and each rank sends and receives about twice the array."""

    def __init__(self, comm=None):
        if comm is None:
            try:
                from mpi4py import MPI
            except ImportError as err:
                raise ExecutionError(f"data-parallel runs need mpi4py ({err}): pip install -e '.[mpi]'") from None
            comm = MPI.COMM_WORLD
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def all_reduce(self, x: np.ndarray, op: str) -> np.ndarray:
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        chunk = -(-flat.size // self.size)
        parts = np.zeros((self.size, chunk), np.float32)
        parts.reshape(-1)[:flat.size] = flat
        received = np.empty_like(parts)
        self.comm.Alltoall(parts, received)
        mine = received[0].copy()
        for row in received[1:]:
            mine += row
        if op == "mean":
            mine /= np.float32(self.size)
        self.comm.Allgather(mine, parts)
        return parts.reshape(-1)[:flat.size].reshape(x.shape)

    def allgather(self, value: object) -> list:
        return self.comm.allgather(value)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (`mpirun`/`mpiexec`)."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def launched_ranks() -> int:
    """How many processes the MPI launcher started (1 without one)."""
    value = next((os.environ[n] for n in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE") if n in os.environ), "1")
    return int(value) if value.isdecimal() else 1


def world_size(pef: PEF) -> int | None:
    """The replicas a data-parallel PEF was compiled for; None for any other PEF."""
    options = {o.name: o.value for o in pef.header.options}
    if not options.get("training.data_parallel"):
        return None
    size = options.get("training.world_size")
    return size if isinstance(size, int) and size >= 1 else 1


def mpirun_command(size: int, pef: Path, data: Path | None) -> str:
    """The command that runs a data-parallel PEF on `size` ranks (with the run's other options after it)."""
    words = ["mpirun", "-n", str(size), "rduflow", "run", str(pef), "--data-parallel"]
    return shlex.join(words + (["--data", str(data)] if data is not None else [])) + " ..."


def local_threads() -> int:
    """Kernel threads per rank: `RDUFLOW_NUM_THREADS`, else the cores shared among the ranks on this machine."""
    if os.environ.get("RDUFLOW_NUM_THREADS", "").strip():
        return default_threads()
    local = next((os.environ[n] for n in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE") if n in os.environ), "1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(int(local) if local.isdecimal() else 1, 1))


def check_launch(pef: PEF, data_parallel: bool, pef_path: Path, data: Path | None) -> int | None:
    """The PEF's world size if this is a data-parallel run; ExecutionError if the PEF, the
    `--data-parallel` flag and the launch do not agree (every rank finds the same mistake)."""
    size = world_size(pef)
    if size is None:
        if data_parallel:
            raise ExecutionError("--data-parallel needs a PEF compiled for it: rduflow compile ... "
                                 "--data-parallel --world-size N")
        if launched_ranks() > 1:
            raise ExecutionError(f"mpirun started {launched_ranks()} ranks, but this PEF is not data-parallel: "
                                 "each would train alone (compile with --data-parallel --world-size "
                                 f"{launched_ranks()})")
        return None
    if not data_parallel or not launched_by_mpi():
        raise ExecutionError(f"this PEF was compiled for data-parallel training over {size} replicas: run it "
                             f"as '{mpirun_command(size, pef_path, data)}'")
    return size


class GroupError(ExecutionError):
    """A mistake every rank of the group detected alike (so no rank needs to abort the others)."""


class Replicas:
    """A rank's view of its data-parallel group, for the training loop (size 1: a single process)."""

    def __init__(self, comm: Communicator | None = None):
        self.comm = comm
        self.rank = comm.rank if comm is not None else 0
        self.size = comm.size if comm is not None else 1

    @property
    def writer(self) -> bool:
        """Whether this rank writes logs, metrics and checkpoints (rank 0)."""
        return self.rank == 0

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This rank's part of a global batch's rows: the rank-th of `size` equal slices."""
        per = len(rows) // self.size
        return rows[self.rank * per:(self.rank + 1) * per]

    def sums(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of every rank's `values`, added in rank order (the same on every rank)."""
        if self.comm is None:
            return [float(v) for v in values]
        totals = [0.0] * len(values)
        for row in self.comm.allgather([float(v) for v in values]):
            totals = [t + v for t, v in zip(totals, row)]
        return totals

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.barrier()

    def weight(self, local: float) -> dict[str, np.float32]:
        """The `replica_weight` input of this rank's step: its loss weight (completion tokens, or rows)
        over the global batch's (equal shares if the global batch has none); {} for a single process."""
        if self.comm is None:
            return {}
        weights = self.comm.allgather(float(local))
        total = sum(weights)
        return {REPLICA_WEIGHT: np.float32(local / total if total else 1.0 / self.size)}

    def idle_weight(self) -> dict[str, np.float32]:
        """The `replica_weight` input of a run that reduces nothing (evaluation: forward sections only)."""
        return {} if self.comm is None else {REPLICA_WEIGHT: np.float32(0.0)}

    def combine(self, outputs: dict[str, np.ndarray], weight: dict[str, np.float32]) -> dict[str, np.ndarray]:
        """A step's outputs for the global batch: the means (`WEIGHTED_OUTPUTS`) summed over the ranks
        weighted by their shares; the others (the all-reduced `grad_norm`) are the same on every rank."""
        if self.comm is None:
            return outputs
        names = [n for n in WEIGHTED_OUTPUTS if n in outputs]
        share = float(weight[REPLICA_WEIGHT])
        totals = self.sums([share * float(outputs[n]) for n in names])
        return {**outputs, **{n: np.float32(t) for n, t in zip(names, totals)}}

    def check_same(self, what: str, value: object) -> None:
        """GroupError on every rank unless every rank has the same `value` of `what` (a dict's
        first differing key is named)."""
        if self.comm is None:
            return
        values = self.comm.allgather(value)
        odd = next((r for r, v in enumerate(values) if v != values[0]), None)
        if odd is None:
            return
        mine, theirs = values[odd], values[0]
        if isinstance(mine, dict) and isinstance(theirs, dict):
            key = next(k for k in sorted(set(mine) | set(theirs), key=str) if mine.get(k) != theirs.get(k))
            what, mine, theirs = f"{what} ({key})", mine.get(key), theirs.get(key)
        raise GroupError(f"data-parallel ranks disagree on {what}: rank {odd} has {mine!r}, rank 0 has {theirs!r} "
                         "(every rank must get the same)")


def pef_fingerprint(path: Path) -> str:
    """The sha256 of a PEF file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def data_fingerprint(path: Path) -> str:
    """A fingerprint of a data folder or file: names, sizes, and the first and last MiB of each file."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if file != Path(path) else file.name}:{size}\n".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_BYTES))
            if size > 2 * FINGERPRINT_BYTES:
                handle.seek(size - FINGERPRINT_BYTES)
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def connect(size: int, pef_path: Path, data: Path | None) -> Replicas:
    """This rank's group, checked: `size` ranks running the same PEF on the same data."""
    comm = MpiCommunicator()
    if comm.size != size:
        raise GroupError(f"this PEF was compiled for {size} data-parallel replicas, but mpirun started "
                         f"{comm.size}: run it as '{mpirun_command(size, pef_path, data)}' (or recompile with --world-size "
                         f"{comm.size})")
    replicas = Replicas(comm)
    replicas.check_same("the PEF (sha256 prefix)", pef_fingerprint(pef_path))
    if data is not None:
        replicas.check_same("the training data (fingerprint)", data_fingerprint(data) if data.exists() else "missing")
    return replicas


def run_replica(replicas: Replicas, body: Callable[[], int], report: Callable[[BaseException], int]) -> int:
    """Run `body` on this rank. A failure is reported (`report` prints it, gives the exit code); a
    `GroupError`, which every rank raises alike, ends this rank normally; any other failure ends the
    whole job through MPI_Abort, so no rank is left waiting for it in a collective."""
    try:
        return body()
    except GroupError as err:
        return report(err)
    except BaseException as err:  # noqa: BLE001 - any failure of one rank must end the job
        code = report(err)
        sys.stdout.flush()
        sys.stderr.flush()
        if replicas.comm is not None and replicas.size > 1:
            time.sleep(ABORT_GRACE)
            replicas.comm.abort(code or 1)
        return code

