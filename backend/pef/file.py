"""The PEF file: a compiled program, self-contained, in msgpack.

Layout: a msgpack map `{"magic": "rduflow-pef", "format_version": 2,
"sha256": <hex digest of payload>, "payload": <bin>}`; the payload is the msgpack
of a `PEF` record:

* `header`: tool version, the whole target description, mode (train or
  inference), chips and tiles used, the compile options (each marked when
  changing it requires a recompile: batch size, sequence length, model
  config, ...), and the sha256 of the model source;
* `symbols`: graph inputs and outputs, params and optimizer state (shape,
  dtype, role, initializer), and which tensor updates which param;
* `sections`: kernel ranges with their phase, PCUs/PMUs and modeled off-chip traffic;
* `kernels`: the kernel programs (`backend.pef.program`), tiers and offsets bound;
* `memory`: the memory plan (`backend.pef.memory_plan`);
* `entries` (format 2): further entry points, each a named program of its own
  (symbols, sections, kernels, memory plan) over the main program's params: a
  generation PEF's `prefill` and `decode` steps beside its `forward` pass. An
  entry's params are main-program params, at the same place, and nothing else
  of the entry overlaps a main-program param, so one set of arenas serves every
  entry and params (a KV cache among them) persist from one entry's run to the
  next. Format 1 files (no entries) are still read.

Tensors are named by their IR text names (`%x` inputs, `@w` params, `%12`
values; `k3_fused/t0` kernel temporaries). The writer is deterministic: equal
inputs give byte-identical files. The reader checks the magic, the version,
the hash, then every field's type and range and every cross-reference before
handing anything over; it never executes anything from the file. Any problem
is a `PEFError` naming the file and what is wrong.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import os
import re
from pathlib import Path
from typing import Iterator, Literal

import attrs
import msgpack

from backend.pef.memory_plan import ALIGN, Allocation, MemoryPlan, lifetimes, overlapping, temp_symbol
from backend.pef.program import KernelProgram
from backend.pef.records import ProgramError
from backend.pef.schema import SchemaError, decode, encode
from backend.pef.targets import ONCHIP, Target
from backend.pef.validate import validate
from ir.dtypes import DType
from ir.errors import PEFError
from ir.files import write_atomically
from ir.init import Init

MAGIC = "rduflow-pef"
FORMAT_VERSION = 2
#: the oldest format version this reader accepts (1: no entry points)
OLDEST_VERSION = 1
#: no arena may claim more than this many bytes (a guard against hostile files)
MAX_ARENA = 2**44
#: limits a user can raise: (environment variable, default, unit): the bytes of a PEF's arenas
#: together, the element operations of one run of its program (or of an entry point)
LIMITS = {"arena": ("RDUFLOW_MAX_ARENA_BYTES", 2**34, "bytes"),
          "work": ("RDUFLOW_MAX_WORK", 2**38, "element operations")}


def limit(name: str) -> int:
    """The limit `name` of LIMITS, from its environment variable if set; PEFError if that is not a positive integer."""
    variable, default, _ = LIMITS[name]
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise PEFError(f"{variable} must be a positive integer, got '{text}'")
    return int(text)


def _over(name: str, amount: int, what: str) -> ProgramError:
    variable, _, unit = LIMITS[name]
    return ProgramError(f"{what} needs {amount} {unit}, more than the limit of {limit(name)} (raise it with {variable})")

Scalar = int | float | str | bool | None


@attrs.frozen
class CompileOption:
    """A compile option's value; `recompile` marks options whose change needs a new PEF."""

    name: str
    value: Scalar
    recompile: bool


@attrs.frozen
class Header:
    tool_version: str
    target: Target
    mode: Literal["train", "inference"]
    n_chips: int = attrs.field(validator=attrs.validators.ge(1))
    num_tiles: int = attrs.field(validator=attrs.validators.ge(1))
    options: tuple[CompileOption, ...] = attrs.field(converter=tuple)
    source_sha256: str

    def option(self, name: str) -> Scalar:
        for option in self.options:
            if option.name == name:
                return option.value
        raise KeyError(name)


@attrs.frozen
class TensorSymbol:
    """A named graph input or output and the tensor holding it."""

    name: str
    tensor: str
    shape: tuple[int, ...] = attrs.field(converter=tuple)
    dtype: str = attrs.field(validator=attrs.validators.in_([d.value for d in DType]))

    @property
    def nbytes(self) -> int:
        return DType(self.dtype).nbytes(math.prod(self.shape))


@attrs.frozen
class ParamSymbol(TensorSymbol):
    """A param, frozen buffer or optimizer state, with its initializer."""

    role: Literal["param", "buffer", "state"]
    init: str
    init_args: dict[str, Scalar]


@attrs.frozen
class UpdateSymbol:
    """The tensor holding a param's (or state's) new value after one step."""

    param: str
    tensor: str


@attrs.frozen
class Symbols:
    inputs: tuple[TensorSymbol, ...] = attrs.field(converter=tuple)
    outputs: tuple[TensorSymbol, ...] = attrs.field(converter=tuple)
    params: tuple[ParamSymbol, ...] = attrs.field(converter=tuple)
    updates: tuple[UpdateSymbol, ...] = attrs.field(converter=tuple)


@attrs.frozen
class Section:
    """Consecutive kernels run together; traffic is bytes per off-chip tier."""

    index: int
    phase: Literal["fwd", "bwd", "allreduce", "gradnorm", "opt"] | None
    kernels: tuple[int, ...] = attrs.field(converter=tuple)
    pcus: int
    pmus: int
    offchip_read: dict[str, int]
    offchip_written: dict[str, int]


@attrs.frozen
class Entry:
    """A further entry point: a named graph of its own over the main program's params."""

    name: str
    symbols: Symbols
    sections: tuple[Section, ...] = attrs.field(converter=tuple)
    kernels: tuple[KernelProgram, ...] = attrs.field(converter=tuple)
    memory: MemoryPlan


@attrs.frozen
class PEF:
    """A whole compiled program: the main program and, possibly, further entry points."""

    header: Header
    symbols: Symbols
    sections: tuple[Section, ...] = attrs.field(converter=tuple)
    kernels: tuple[KernelProgram, ...] = attrs.field(converter=tuple)
    memory: MemoryPlan
    entries: tuple[Entry, ...] = attrs.field(converter=tuple, default=())

    @property
    def entry_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def entry(self, name: str) -> PEF:
        """Entry point `name` as a program of its own (the same header, no entries); KeyError if none."""
        for e in self.entries:
            if e.name == name:
                return PEF(self.header, e.symbols, e.sections, e.kernels, e.memory)
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        """The file's bytes: deterministic for equal records."""
        payload = msgpack.packb(encode(self), use_bin_type=True)
        outer = {"magic": MAGIC, "format_version": FORMAT_VERSION,
                 "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
        return msgpack.packb(outer, use_bin_type=True)


# --- reading ---------------------------------------------------------------------------
def read_pef(path: str | Path) -> PEF:
    """Load and validate a PEF file; PEFError names the file and the problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PEFError(f"cannot read PEF file {path}: {err.strerror or err}") from None
    return load_pef(data, str(path))


def load_pef(data: bytes, source: str = "<bytes>") -> PEF:
    """Validate PEF bytes; `source` names them in errors."""
    payload, version = _unwrap(data, source)
    with _no_cycle_collection():
        return _load_payload(payload, version, source)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector while the reader builds its records: they form no cycles, and
    the collector, set off by the many objects allocated, would otherwise walk the whole heap again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_payload(payload: bytes, version: int, source: str) -> PEF:
    """The PEF record of a verified payload, validated."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=False)
    except Exception as err:  # noqa: BLE001 - msgpack raises many types on bad bytes
        raise PEFError(f"{source}: corrupted PEF payload ({type(err).__name__})") from None
    try:
        pef = decode(PEF, obj)
        if version < 2 and pef.entries:
            raise ProgramError(f"entries: format version {version} has no entry points")
        _Checker(pef).run()
        check_entries(pef)
        check_limits(pef)
    except (SchemaError, ProgramError) as err:
        raise PEFError(f"{source}: invalid PEF: {err}") from None
    return pef


def check_limits(pef: PEF) -> None:
    """The arenas every entry shares, and the work of one run of each program, within the user's limits."""
    sizes: dict[str, int] = {}
    for plan in (pef.memory, *(e.memory for e in pef.entries)):
        for arena in plan.arenas:
            sizes[arena.name] = max(sizes.get(arena.name, 0), arena.size)
    if sum(sizes.values()) > limit("arena"):
        raise _over("arena", sum(sizes.values()), "memory: the program (arenas " + ", ".join(
            f"{name} {size} bytes" for name, size in sorted(sizes.items())) + ")")
    for name, kernels in (("the program", pef.kernels), *((f"entry '{e.name}'", e.kernels) for e in pef.entries)):
        work = sum(k.work() for k in kernels)
        if work > limit("work"):
            heaviest = max(kernels, key=KernelProgram.work)
            raise _over("work", work, f"one run of {name} (its kernel '{heaviest.name}': {heaviest.work()})")


_ENTRY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_entries(pef: PEF) -> None:
    """Each entry valid as a program of its own, sharing the main program's params."""
    main = {p.name: p for p in pef.symbols.params}
    where = pef.memory.lookup()
    ranges = [where[p.tensor] for p in pef.symbols.params]
    for i, entry in enumerate(pef.entries):
        at = f"entries[{i}]"
        if not _ENTRY_NAME.match(entry.name):
            raise ProgramError(f"{at}.name: '{entry.name}' is not an identifier")
        if entry.name in pef.entry_names[:i]:
            raise ProgramError(f"{at}.name: entry '{entry.name}' appears twice")
        program = pef.entry(entry.name)
        try:
            _Checker(program).run()
        except ProgramError as err:
            raise ProgramError(f"{at} '{entry.name}': {err}") from None
        own = program.memory.lookup()
        shared = set()
        for param in entry.symbols.params:
            if main.get(param.name) != param or _place(own[param.tensor]) != _place(where[param.tensor]):
                raise ProgramError(f"{at} '{entry.name}': param '{param.name}' is not the main program's, "
                                   "at the same place")
            shared.add(param.tensor)
        tensor_of = {p.name: p.tensor for p in entry.symbols.params}
        shared |= {u.tensor for u in entry.symbols.updates  # updates written in place
                   if _range(own[u.tensor]) == _range(own[tensor_of[u.param]])}
        for a in program.memory.allocations:
            clash = next((p for p in ranges if a.tensor not in shared and a.nbytes and p.nbytes
                          and a.arena == p.arena and a.offset < p.offset + p.nbytes
                          and p.offset < a.offset + a.nbytes), None)
            if clash is not None:
                raise ProgramError(f"{at} '{entry.name}': tensor '{a.tensor}' overlaps param tensor "
                                   f"'{clash.tensor}' of the main program")


def _place(a: Allocation) -> tuple[str, str, int]:
    """Which tensor lies where (its size aside)."""
    return a.tensor, a.arena, a.offset


def _range(a: Allocation) -> tuple[str, int, int]:
    """The bytes an allocation covers (whichever tensor it holds)."""
    return a.arena, a.offset, a.nbytes


def _unwrap(data: bytes, source: str) -> tuple[bytes, int]:
    """The verified payload of the outer envelope."""
    try:
        outer = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # noqa: BLE001
        outer = None
    if not isinstance(outer, dict) or outer.get("magic") != MAGIC:
        raise PEFError(f"{source}: not a PEF file (no rduflow PEF header; truncated or another format)")
    version = outer.get("format_version")
    if type(version) is not int:
        raise PEFError(f"{source}: PEF format version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise PEFError(f"{source}: PEF format version {version} is newer than this rduflow reads "
                       f"({FORMAT_VERSION}); upgrade rduflow or recompile the model")
    if version < OLDEST_VERSION:
        raise PEFError(f"{source}: PEF format version {version} is no longer supported; recompile the model")
    digest, payload = outer.get("sha256"), outer.get("payload")
    if set(outer) != {"magic", "format_version", "sha256", "payload"} \
            or not isinstance(digest, str) or not isinstance(payload, bytes):
        raise PEFError(f"{source}: malformed PEF envelope")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise PEFError(f"{source}: the PEF file was modified or corrupted (checksum mismatch)")
    return payload, version


class _Checker:
    """Cross-field rules of a decoded PEF (kernel programs are checked one by one too)."""

    def __init__(self, pef: PEF):
        self.pef = pef
        self.plan = pef.memory.lookup()
        self.tensors: dict[str, tuple[tuple[int, ...], str]] = {}

    def run(self) -> None:
        self.memory()
        self.symbols()
        self.kernels()
        self.sections()

    def memory(self) -> None:
        header, memory = self.pef.header, self.pef.memory
        arenas = {}
        tiers = {t.name for t in header.target.offchip} | {ONCHIP}
        for arena in memory.arenas:
            if arena.name in arenas:
                raise ProgramError(f"memory: arena '{arena.name}' appears twice")
            if arena.name not in tiers:
                raise ProgramError(f"memory: arena '{arena.name}' is not a memory tier of target '{header.target.name}'")
            if arena.size > MAX_ARENA or arena.size % ALIGN:
                raise ProgramError(f"memory: arena '{arena.name}' has a bad size {arena.size}")
            arenas[arena.name] = arena
        if len(self.plan) != len(memory.allocations):
            raise ProgramError("memory: a tensor is allocated twice")
        for a in memory.allocations:
            arena = arenas.get(a.arena)
            if arena is None or a.offset + a.nbytes > arena.size or a.offset % ALIGN:
                raise ProgramError(f"memory: tensor '{a.tensor}' lies outside its arena '{a.arena}'")
        clash = overlapping(memory.allocations, lifetimes(list(self.pef.kernels), self.kept(), self.swapped()))
        if clash is not None:
            first, second = clash
            raise ProgramError(f"memory: tensors '{first.tensor}' and '{second.tensor}' overlap in '{first.arena}' "
                               "while both are live")

    def kept(self) -> set[str]:
        """Tensors live to the end: outputs, updates, and params (but one whose update takes its range)."""
        symbols = self.pef.symbols
        updates = {u.param: u.tensor for u in symbols.updates}
        shared = {p.tensor for p in symbols.params if p.name in updates and self._same_range(p.tensor, updates[p.name])}
        return {s.tensor for s in symbols.outputs} | set(updates.values()) | \
            {p.tensor for p in symbols.params if p.tensor not in shared}

    def swapped(self) -> set[str]:
        """Updates outside their param's range: the runtime swaps the two after a step, so the update's
        range holds the param during the next one."""
        params = {p.name: p.tensor for p in self.pef.symbols.params}
        return {u.tensor for u in self.pef.symbols.updates
                if u.param in params and not self._same_range(params[u.param], u.tensor)}

    def _same_range(self, a: str, b: str) -> bool:
        x, y = self.plan.get(a), self.plan.get(b)
        return x is not None and y is not None and (x.arena, x.offset) == (y.arena, y.offset)

    def define(self, where: str, symbol: TensorSymbol | ParamSymbol) -> None:
        if symbol.tensor in self.tensors:
            raise ProgramError(f"{where}: tensor '{symbol.tensor}' is defined twice")
        self.allocated(where, symbol.tensor, symbol.nbytes, offchip=True)
        self.tensors[symbol.tensor] = (tuple(symbol.shape), symbol.dtype)

    def allocated(self, where: str, tensor: str, nbytes: int, offchip: bool = False) -> Allocation:
        a = self.plan.get(tensor)
        if a is None:
            raise ProgramError(f"{where}: tensor '{tensor}' has no place in the memory plan")
        if a.nbytes < nbytes:
            raise ProgramError(f"{where}: tensor '{tensor}' needs {nbytes} bytes, the plan gives {a.nbytes}")
        if offchip and a.arena == ONCHIP:
            raise ProgramError(f"{where}: tensor '{tensor}' must live off-chip")
        return a

    def symbols(self) -> None:
        symbols = self.pef.symbols
        for kind, names in (("inputs", [s.name for s in symbols.inputs]),
                            ("outputs", [s.name for s in symbols.outputs]),
                            ("params", [p.name for p in symbols.params]),
                            ("updates", [u.param for u in symbols.updates])):
            if len(set(names)) != len(names):
                raise ProgramError(f"symbols.{kind}: a name appears twice")
        for kind, table in (("inputs", symbols.inputs), ("params", symbols.params)):
            for s in table:
                self.define(f"symbols.{kind}.{s.name}", s)
        valid: set[str] = set()  # initializers checked already: many params share one
        for param in symbols.params:
            spec = repr((param.init, sorted(param.init_args.items())))  # repr tells 1, 1.0, True and -0.0 apart
            if spec in valid:
                continue
            try:
                Init(param.init, param.init_args)
            except (ValueError, TypeError) as err:
                raise ProgramError(f"symbols.params.{param.name}: {err}") from None
            valid.add(spec)

    def kernels(self) -> None:
        names = set()
        tiers = {a.name for a in self.pef.memory.arenas}
        for i, program in enumerate(self.pef.kernels):
            where = f"kernels[{i}]"
            if program.name in names:
                raise ProgramError(f"{where}: kernel name '{program.name}' appears twice")
            names.add(program.name)
            validate(program)
            for buffer in program.buffers:
                self.buffer(where, program, buffer)
            if not set(program.cost.bytes_read) | set(program.cost.bytes_written) <= tiers:
                raise ProgramError(f"{where}.cost: bytes of a memory tier the plan does not have")
        symbols = self.pef.symbols
        for out in symbols.outputs:
            if self.tensors.get(out.tensor) != (tuple(out.shape), out.dtype):
                raise ProgramError(f"symbols.outputs.{out.name}: tensor '{out.tensor}' is not computed as "
                                   f"{out.dtype}{list(out.shape)}")
            self.allocated(f"symbols.outputs.{out.name}", out.tensor, 0, offchip=True)
        params = {p.name: p for p in symbols.params}
        for update in symbols.updates:
            param = params.get(update.param)
            if param is None or param.role == "buffer":
                raise ProgramError(f"symbols.updates: '{update.param}' is not a trainable param or state")
            if self.tensors.get(update.tensor) != (tuple(param.shape), param.dtype):
                raise ProgramError(f"symbols.updates.{update.param}: tensor '{update.tensor}' does not match the param")
            self.allocated(f"symbols.updates.{update.param}", update.tensor, 0, offchip=True)
            self.same_size(update, param)

    def same_size(self, update: UpdateSymbol, param: ParamSymbol) -> None:
        """An update outside its param's range trades places with it (or is copied into it) after each
        step: every kernel then sees one tensor in the other's range, so the two are the same size
        (an update in place is too)."""
        a, b = self.plan[param.tensor], self.plan[update.tensor]
        if a.nbytes != b.nbytes:
            raise ProgramError(f"symbols.updates.{update.param}: update tensor '{update.tensor}' has a range of "
                               f"{b.nbytes} bytes, its param '{param.tensor}' one of {a.nbytes} bytes; they trade "
                               "places after each step, so they must be the same size")

    def buffer(self, where: str, program: KernelProgram, buffer) -> None:
        symbol = temp_symbol(program, buffer.name) if buffer.role == "temp" else buffer.name
        if buffer.role == "input" and self.tensors.get(symbol) != (tuple(buffer.shape), buffer.dtype):
            raise ProgramError(f"{where}: input '{symbol}' is not an earlier tensor of type "
                               f"{buffer.dtype}{list(buffer.shape)}")
        if buffer.role == "output":
            if symbol in self.tensors:
                raise ProgramError(f"{where}: tensor '{symbol}' is defined twice")
            self.tensors[symbol] = (tuple(buffer.shape), buffer.dtype)
        a = self.allocated(where, symbol, DType(buffer.dtype).nbytes(buffer.span))
        if (buffer.tier, buffer.offset) != (a.arena, a.offset):
            raise ProgramError(f"{where}: buffer '{buffer.name}' is not where the memory plan puts it")

    def sections(self) -> None:
        header, target = self.pef.header, self.pef.header.target
        if header.n_chips > target.chips_per_node or header.num_tiles > target.tiles:
            raise ProgramError("header: more chips or tiles than the target has")
        units = header.n_chips * header.num_tiles
        pcus, pmus = units * target.pcus_per_tile, units * target.pmus_per_tile
        offchip = {t.name for t in target.offchip}
        expected = 0
        for i, section in enumerate(self.pef.sections):
            where = f"sections[{i}]"
            if section.index != i or not section.kernels:
                raise ProgramError(f"{where}: sections must be numbered in order and not empty")
            if list(section.kernels) != list(range(expected, expected + len(section.kernels))):
                raise ProgramError(f"{where}: kernels must be consecutive, in order")
            expected += len(section.kernels)
            if expected > len(self.pef.kernels):
                raise ProgramError(f"{where}: refers to a kernel that does not exist")
            members = [self.pef.kernels[k] for k in section.kernels]
            if any(k.phase != section.phase for k in members):
                raise ProgramError(f"{where}: its kernels' phases differ from the section's")
            if section.pcus != sum(k.schedule.pcus for k in members) or not 0 < section.pcus <= pcus \
                    or section.pmus != sum(k.schedule.pmus for k in members) or not 0 < section.pmus <= pmus:
                raise ProgramError(f"{where}: {section.pcus} PCUs / {section.pmus} PMUs do not match its kernels "
                                   f"or do not fit the budget of {pcus} / {pmus}")
            if not set(section.offchip_read) | set(section.offchip_written) <= offchip:
                raise ProgramError(f"{where}: traffic of a tier that is not off-chip memory of the target")
        if expected != len(self.pef.kernels):
            raise ProgramError("sections: some kernels belong to no section")


# --- writing ----------------------------------------------------------------------------
def write_pef(data: bytes, folder: str | Path, name: str) -> Path:
    """Write `folder/name/name.pef` atomically (a temporary file renamed into place)."""
    if not name or "/" in name or name in (".", "..") or "\\" in name:
        raise PEFError(f"bad PEF name '{name}': it names a folder and a file")
    directory = Path(folder) / name
    path = directory / f"{name}.pef"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    except OSError as err:
        raise PEFError(f"cannot write PEF file {path}: {err.strerror or err}") from None
    return path
