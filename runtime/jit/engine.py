"""The native-code layer: the host target machine, the O3 pipeline, object code, loading.

Kernels are built as LLVM IR text, optimized with llvmlite's new pass manager at O3
(loop and SLP vectorization on) for the host CPU's name and features, emitted as
object code (what the disk cache stores), and loaded into one MCJIT engine per
`NativeLibrary`.
"""
from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm


_lock = threading.Lock()


@functools.cache
def target_machine() -> llvm.TargetMachine:
    """The host CPU's target machine at O3 (shared; never handed to an engine)."""
    return new_target_machine()


def new_target_machine(opt: int = 3, cpu: str | None = None) -> llvm.TargetMachine:
    """A fresh target machine for the host CPU and its features (an execution engine takes
    ownership of its own), or for the named `cpu` with that CPU's default features (for
    inspecting the code another host would get; never to run)."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    features = llvm.get_host_cpu_features().flatten() if cpu is None else ""
    return target.create_target_machine(cpu=cpu or llvm.get_host_cpu_name(), features=features,
                                        opt=opt, codemodel="jitdefault")


@functools.cache
def codegen_version() -> str:
    """A hash of the code generator's own source: any change to it invalidates cached code."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def host_signature() -> str:
    """What native code depends on besides the kernel: CPU, features, llvmlite, codegen."""
    return "|".join((llvm.get_process_triple(), llvm.get_host_cpu_name(),
                     llvm.get_host_cpu_features().flatten(), llvmlite.__version__, codegen_version()))


def optimize(module: llvm.ModuleRef, tm: llvm.TargetMachine | None = None, level: int = 3) -> None:
    """Run the module pipeline of `level` (3: O3 with loop and SLP vectorization)."""
    pto = llvm.create_pipeline_tuning_options(speed_level=level)
    pto.loop_vectorization = level >= 2
    pto.slp_vectorization = level >= 2
    pto.loop_unrolling = False
    pb = llvm.create_pass_builder(tm or target_machine(), pto)
    pb.getModulePassManager().run(module, pb)


_local = threading.local()


def _thread_target_machine(level: int) -> llvm.TargetMachine:
    """This thread's target machine: O3 code generation at level 3, fast instruction selection below."""
    codegen = 3 if level >= 3 else 0
    attr = f"tm{codegen}"
    if not hasattr(_local, attr):
        setattr(_local, attr, new_target_machine(codegen))
    return getattr(_local, attr)


def compile_ir(text: str, level: int = 3) -> bytes:
    """LLVM IR text to host object code (thread-safe: own context and target machine).

    Level 3 is the O3 pipeline with vectorization and O3 code generation. Lower levels
    (an O1 or O0 pipeline, fast instruction selection) compile 4-20x quicker, for
    kernels so small that their compile time would dwarf their run time.
    """
    tm = _thread_target_machine(level)
    return tm.emit_object(_optimized(text, tm, level, verify=True))


def assembly(text: str, level: int = 3, cpu: str | None = None) -> str:
    """The optimized assembly of LLVM IR text for the host, or for the named `cpu` (for
    inspection and tests)."""
    tm = _thread_target_machine(level) if cpu is None else new_target_machine(3 if level >= 3 else 0, cpu)
    return tm.emit_assembly(_optimized(text, tm, level))


def _optimized(text: str, tm: llvm.TargetMachine, level: int, verify: bool = False) -> llvm.ModuleRef:
    """LLVM IR text parsed in a context of its own, set for `tm`, run through the `level` pipeline."""
    module = llvm.parse_assembly(text, llvm.create_context())
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    if verify:
        module.verify()
    optimize(module, tm, level)
    return module


class NativeLibrary:
    """One MCJIT engine; object files are added to it and functions looked up by name."""

    def __init__(self) -> None:
        tm = new_target_machine()
        with _lock:
            empty = llvm.parse_assembly("")
            empty.triple = tm.triple
            self._engine = llvm.create_mcjit_compiler(empty, tm)
        self._pending = False

    def add_object(self, data: bytes) -> None:
        with _lock:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(data))
        self._pending = True

    def address(self, name: str) -> int:
        """The native address of a loaded function."""
        with _lock:
            if self._pending:
                self._engine.finalize_object()
                self._pending = False
            address = self._engine.get_function_address(name)
        if not address:
            raise KeyError(f"no native function '{name}'")
        return address
