"""Fuzz the PEF reader: mutated files load identically or are refused with PEFError.

    python tests/backend/fuzz_pef.py [N] [SEED]      # N cases (default 10000)

Raw mutations (byte flips, truncations, inserted or deleted bytes) must be
refused or load exactly the original program. Structural mutations decode the
payload, change one field (another type, an extreme or shifted number, a
missing or unknown key, a reordered, shortened or lengthened list), re-encode
it and re-sign the checksum, so the validator — not only the hash — is
exercised: such a file is refused or loads a program that re-encodes to
itself. Any other exception is a bug.

    python tests/backend/fuzz_pef.py execute [N] [SEED]   # N executed mutants (default 10000)

Executed mutants go further: every zoo model (logreg, mlp, lenet, gpt2, llama), compiled
for training and for inference, and two programs of other kinds (gpt2 for inference with
q8_0 weights, mlp trained data-parallel over 2 replicas, run with a stand-in group), has one field of its decoded payload changed at a time
(the field drawn evenly among every field path of the schema, `kernels[].stages[].a.strides[]`
and the like, then one instance of it), re-signed, read, and — if the reader accepts it —
run once (and each entry point once) with kernels compiled in the checked mode
(RDUFLOW_JIT_CHECKED), in a worker process. A mutant must be refused with a PEFError,
run, or stop with a user error (`RduflowError`, e.g. an index out of range); a load or
store the checked code catches outside its buffer, any other exception, a crash of the
worker or a case running past its time limit is a violation.
"""
from __future__ import annotations

import collections
import hashlib
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import msgpack
import numpy as np

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]  # this folder and the shared helpers

from backend_graphs import decompose, fuse_phases, mlp  # noqa: E402
from planned_backend import build_pef  # noqa: E402

from backend.driver import BackendOptions  # noqa: E402
from backend.pef.file import FORMAT_VERSION, PEF, load_pef
from backend.pef.targets import load_target
from ir.errors import PEFError  # noqa: E402

_ODD_VALUES = [None, True, False, 0, 1, -1, 2**31, 2**63 - 1, -2**63, 0.5, -1e300, float("nan"),
               float("inf"), "", "x", "%0", "f32", "onchip", b"\x00", [], [0], [[1]], {}, {"kind": "map"}]


def sample_pef() -> PEF:
    """A small training program: fused forward kernel, an optimizer step."""
    return build_pef(fuse_phases(decompose(mlp())), BackendOptions(load_target("rdu-mini")))


def _sign(payload: bytes) -> bytes:
    outer = {"magic": "rduflow-pef", "format_version": FORMAT_VERSION,
             "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    return msgpack.packb(outer, use_bin_type=True)


def _payload(data: bytes) -> bytes:
    return msgpack.unpackb(data, raw=False)["payload"]


def raw_mutation(data: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(4)
    pos = int(rng.integers(len(data)))
    if kind == 0:
        return data[:pos] + bytes([data[pos] ^ int(rng.integers(1, 256))]) + data[pos + 1:]
    if kind == 1:
        return data[:pos]
    if kind == 2:
        return data[:pos] + bytes(rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8)) + data[pos:]
    return data[:pos] + data[pos + int(rng.integers(1, 9)):]


def _slots(obj, out: list) -> list:
    """Every (container, key) of a decoded structure."""
    if isinstance(obj, dict):
        for key in obj:
            out.append((obj, key))
            _slots(obj[key], out)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            out.append((obj, i))
            _slots(item, out)
    return out


def _mutate_slot(container, key, rng: np.random.Generator) -> None:
    value = container[key]
    kind = rng.integers(6)
    if kind == 0 or not isinstance(value, (int, float, list, dict, str)) or isinstance(value, bool):
        container[key] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
    elif isinstance(value, (int, float)):
        container[key] = [value + 1, value - 1, -value, value * 2**20, 0][int(rng.integers(5))]
    elif isinstance(value, str):
        container[key] = [value + "x", value[:-1], value.upper(), "%" + value][int(rng.integers(4))]
    elif isinstance(value, list) and value:
        ops = [lambda v: v[:-1], lambda v: v + v[-1:], lambda v: v[::-1], lambda v: []]
        container[key] = ops[int(rng.integers(4))](value)
    elif isinstance(value, dict) and value:
        names = list(value)
        if rng.integers(2):
            del value[names[int(rng.integers(len(names)))]]
        else:
            value["unexpected"] = 1
    else:
        container[key] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]


def structural_mutation(data: bytes, rng: np.random.Generator) -> bytes:
    obj = msgpack.unpackb(_payload(data), raw=False)
    for _ in range(int(rng.integers(1, 3))):
        slots = _slots(obj, [])
        container, key = slots[int(rng.integers(len(slots)))]
        _mutate_slot(container, key, rng)
    return _sign(msgpack.packb(obj, use_bin_type=True))


def check_case(original: PEF, data: bytes, mutated: bytes, structural: bool) -> str:
    """'refused', 'identical' or 'valid'; AssertionError for a broken contract."""
    try:
        loaded = load_pef(mutated, "fuzz.pef")
    except PEFError as err:
        assert "fuzz.pef" in str(err), str(err)
        return "refused"
    if not structural or mutated == data:
        assert loaded.to_bytes() == data, "a raw mutation loaded a different program"
        return "identical"
    assert load_pef(loaded.to_bytes()).to_bytes() == loaded.to_bytes()
    return "valid"


def run(n: int, seed: int = 0) -> collections.Counter:
    original = sample_pef()
    data = original.to_bytes()
    rng = np.random.default_rng(seed)
    outcomes: collections.Counter = collections.Counter()
    for i in range(n):
        structural = i % 2 == 1
        mutated = structural_mutation(data, rng) if structural else raw_mutation(data, rng)
        outcomes[("structural" if structural else "raw", check_case(original, data, mutated, structural))] += 1
    return outcomes


# --- executed mutants -------------------------------------------------------------------
class Variant(NamedTuple):
    """One program of the corpus: `rduflow compile MODEL -O1 --target rdu-mini` with these options."""

    model: str
    inference: bool
    weight_dtype: str = "f32"
    #: above 1: a data-parallel training program for that many replicas
    world_size: int = 1

    @property
    def label(self) -> str:
        kinds = [self.weight_dtype] * (self.weight_dtype != "f32") + ["data-parallel"] * (self.world_size > 1)
        return "-".join([self.model, *kinds, "inference" if self.inference else "train"])


ZOO = (*(Variant(model, inference) for model in ("logreg", "mlp", "lenet", "gpt2", "llama")
         for inference in (False, True)),
       Variant("gpt2", True, weight_dtype="q8_0"), Variant("mlp", False, world_size=2))
#: limits the worker reads PEFs under (a user may lower them; they keep a case short)
WORKER_LIMITS = {"RDUFLOW_MAX_WORK": str(2**27), "RDUFLOW_MAX_ARENA_BYTES": str(2**28)}
#: seconds one executed case may take (a compile of the mutated kernel included)
CASE_SECONDS = 60
#: cases a worker runs before a fresh one takes over (its native library only grows)
WORKER_CASES = 250
_NUMBERS = (0, 1, -1, 2, 2**31, 2**32, 2**40, 2**61, 2**62)
_FLOATS = (0.0, -0.0, 1e30, -1e30, float("nan"), float("inf"), float("-inf"))


def _pattern(path: tuple) -> str:
    """A field path with list positions dropped: `kernels[].stages[].a.strides[]`."""
    return "".join("[]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")


def _paths(obj, prefix: tuple = ()) -> list[tuple]:
    """The path of every field and list item of a decoded payload."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    out = []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


def _lists(obj):
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj


class _Model:
    """One corpus program's payload and its field paths, grouped by pattern."""

    def __init__(self, variant: Variant):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
        from zoo_programs import compiled
        self.variant = variant
        self.payload = _payload(compiled(variant.model, "O1", variant.inference, weight_dtype=variant.weight_dtype,
                                         world_size=variant.world_size).pef.to_bytes())
        by_pattern: dict[str, list[tuple]] = collections.defaultdict(list)
        for path in _paths(_lists(msgpack.unpackb(self.payload, raw=False))):
            by_pattern[_pattern(path)].append(path)
        self.patterns = sorted(by_pattern)
        self.paths = by_pattern

    def mutant(self, rng: np.random.Generator) -> tuple[bytes, list[str]]:
        """A signed mutant and the fields changed (one, sometimes two)."""
        obj = _lists(msgpack.unpackb(self.payload, raw=False))
        changed = []
        for _ in range(1 if rng.random() < 0.75 else 2):
            instances = self.paths[self.patterns[int(rng.integers(len(self.patterns)))]]
            path = instances[int(rng.integers(len(instances)))]
            container = obj
            try:  # a second change may fall inside what the first one replaced
                for key in path[:-1]:
                    container = container[key]
                container[path[-1]]
            except (LookupError, TypeError):
                continue
            _mutate_field(container, path[-1], rng)
            changed.append(_pattern(path))
        return _sign(msgpack.packb(obj, use_bin_type=True)), changed


def _mutate_field(container, key, rng: np.random.Generator) -> None:
    """Change one field: an odd value, an extreme or shifted number, or `_mutate_slot`'s edits."""
    value = container[key]
    if type(value) is int and rng.random() < 0.6:
        container[key] = [*_NUMBERS, value * 2**20, value + 2**40, -value][int(rng.integers(len(_NUMBERS) + 3))]
    elif type(value) is float and rng.random() < 0.6:
        container[key] = _FLOATS[int(rng.integers(len(_FLOATS)))]
    else:
        _mutate_slot(container, key, rng)


class Violation(Exception):
    """A mutant that broke the reader's or the runtime's contract."""


def _inputs(symbols, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the right types: small non-negative integers, normal floats, a small learning rate."""
    from ir.dtypes import DType
    out = {}
    for s in symbols.inputs:
        dtype = DType(s.dtype)
        if s.name == "lr":
            out[s.name] = np.full(s.shape, 0.01, dtype.np)
        elif dtype.is_int:
            out[s.name] = rng.integers(0, 4, s.shape).astype(dtype.np)
        else:
            out[s.name] = rng.standard_normal(s.shape).astype(dtype.np)
    return out


def execute(mutated: bytes, jit, rng: np.random.Generator, world_size: int = 1) -> str:
    """'refused', 'ran' or 'user-error' (a clean run-time error); Violation for a broken contract.
    A data-parallel program (`world_size` above 1) runs in a stand-in group of that size."""
    from ir.errors import RduflowError
    from replicated import Replicated
    from runtime.program import Program
    try:
        pef = load_pef(mutated, "fuzz.pef")
    except PEFError as err:
        if "fuzz.pef" not in str(err) and "RDUFLOW_" not in str(err):
            raise Violation(f"a refusal that does not name the file: {err}") from None
        return "refused"
    try:
        program = Program(pef, jit=jit, threads=1, communicator=Replicated(world_size) if world_size > 1 else None)
        program.run(_inputs(pef.symbols, rng))
        for name in pef.entry_names:
            program.entry(name).run(_inputs(pef.entry(name).symbols, rng))
    except RduflowError as err:
        if "outside its buffer" in str(err):
            raise Violation(f"the reader accepted an access outside its buffer: {err}") from None
        return "user-error"
    return "ran"


def _worker(connection, seed: int) -> None:
    """Run the cases the parent sends, `(model index, case number)`, answering (outcome, fields, detail)."""
    os.environ.update(WORKER_LIMITS)
    from runtime.jit.library import Jit
    jit = Jit(checked=True)  # compiles on every core; each mutant runs on one
    models: dict[int, _Model] = {}
    while True:
        task = connection.recv()
        if task is None:
            return
        index, case = task
        model = models.get(index) or models.setdefault(index, _Model(ZOO[index]))
        rng = np.random.default_rng([seed, case])
        mutated, fields = model.mutant(rng)
        try:
            outcome, detail = execute(mutated, jit, rng, model.variant.world_size), ""
        except Violation as err:
            outcome, detail = "violation", str(err)
        except Exception as err:  # noqa: BLE001 - an internal error is what the fuzzer looks for
            outcome, detail = "internal-error", f"{type(err).__name__}: {err}"[:300]
        connection.send((outcome, fields, detail))


class _Pool:
    """One worker process at a time, replaced after a crash, a hang or WORKER_CASES cases."""

    def __init__(self, seed: int):
        self.seed, self.process, self.cases = seed, None, 0
        self.context = multiprocessing.get_context("spawn")

    def run(self, index: int, case: int) -> tuple[str, list[str], str]:
        if self.process is None or self.cases >= WORKER_CASES:
            self.stop()
            self.connection, child = self.context.Pipe()
            self.process = self.context.Process(target=_worker, args=(child, self.seed), daemon=True)
            self.process.start()
            self.cases = 0
        self.cases += 1
        self.connection.send((index, case))
        try:
            if self.connection.poll(CASE_SECONDS):
                return self.connection.recv()
            outcome = "hang"
        except EOFError:
            outcome = "crash"
        self.process.join(1)
        code = self.process.exitcode
        self.process.kill()
        self.process.join()
        self.process = None
        return outcome, [], f"worker exit code {code}"

    def stop(self) -> None:
        if self.process is not None:
            self.connection.send(None)
            self.process.join(10)
            self.process.kill()
            self.process = None


def run_executed(n: int, seed: int = 0, progress=None) -> dict:
    """`n` executed mutants spread over ZOO; counts per outcome, fields covered, violations, rate."""
    pool = _Pool(seed)
    outcomes: collections.Counter = collections.Counter()
    fields: set[str] = set()
    violations: list[str] = []
    start = time.perf_counter()
    try:
        for case in range(n):
            index = case % len(ZOO)
            outcome, changed, detail = pool.run(index, case)
            outcomes[(ZOO[index].label, outcome)] += 1
            fields.update(changed)
            if outcome not in ("refused", "ran", "user-error"):
                violations.append(f"{ZOO[index].label} case {case} (seed {seed}) {outcome}: {changed} {detail}")
                if progress is not None:
                    print("VIOLATION", violations[-1], flush=True)
            if progress is not None and (case + 1) % progress == 0:
                print(f"{case + 1} cases, {(case + 1) / (time.perf_counter() - start):.1f}/s, "
                      f"{len(violations)} violations", flush=True)
    finally:
        pool.stop()
    return {"outcomes": outcomes, "fields": fields, "violations": violations,
            "seconds": time.perf_counter() - start}


def _main(argv: list[str]) -> None:
    if argv[:1] == ["execute"]:
        count = int(argv[1]) if len(argv) > 1 else 10_000
        result = run_executed(count, int(argv[2]) if len(argv) > 2 else 0, progress=100)
        for (name, outcome), number in sorted(result["outcomes"].items()):
            print(f"{name:18s} {outcome:14s} {number}")
        print(f"{count} executed mutants in {result['seconds']:.0f} s ({count / result['seconds']:.1f}/s), "
              f"{len(result['fields'])} field paths mutated, {len(result['violations'])} violations")
        sys.exit(1 if result["violations"] else 0)
    count = int(argv[0]) if argv else 10_000
    result = run(count, int(argv[1]) if len(argv) > 1 else 0)
    for (kind, outcome), number in sorted(result.items()):
        print(f"{kind:10s} {outcome:9s} {number}")
    print(f"{count} cases, no contract violation")


if __name__ == "__main__":
    _main(sys.argv[1:])
