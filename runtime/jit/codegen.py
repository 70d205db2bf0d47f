"""LLVM IR building blocks shared by every kernel: types, element access, loops, functions.

Every exported kernel function has the ABI `i32 name(i8** args, i64 lo, i64 hi)`:
`args` holds the base pointers of the kernel's buffers, `[lo, hi)` is the share of
the parallel axis to run (the executor splits it across threads), and the result is
0 on success or an error code (see `ERRORS`). The body is emitted into an internal
function taking each buffer as a `noalias` pointer, inlined into the wrapper.
"""
from __future__ import annotations

import contextlib
import re
import weakref
from typing import Callable, Iterator, Sequence

import attrs
import llvmlite.ir as ir

from ir.dtypes import DType

I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
F16, F32 = ir.HalfType(), ir.FloatType()
VOIDP = I8.as_pointer()

#: error codes a kernel returns
ERRORS = {1: "index out of range", 2: "out of memory (a kernel could not allocate its working buffer)",
          3: "a load or store outside its buffer (caught by RDUFLOW_JIT_CHECKED)"}
INDEX_ERROR = 1
OUT_OF_MEMORY = 2
OUT_OF_BOUNDS = 3


@attrs.frozen
class _Bounds:
    """A checked kernel body: the element count of each buffer argument, the status slot an
    out-of-bounds access sets, and the scratch element it is redirected to."""

    spans: dict
    status: ir.Value
    scratch: ir.GlobalVariable


#: checked kernel bodies (see `kernel_function`'s `spans`)
_CHECKED: weakref.WeakKeyDictionary[ir.Function, _Bounds] = weakref.WeakKeyDictionary()

_STORAGE = {DType.f32: F32, DType.f16: F16, DType.bf16: I16, DType.i32: I32,
            DType.i64: I64, DType.bool: I8, DType.q8_0: I8, DType.q4_0: I8, DType.q4_1: I8}
_COMPUTE = {DType.f32: F32, DType.f16: F32, DType.bf16: F32, DType.i32: I32,
            DType.i64: I64, DType.bool: I1, DType.q8_0: F32, DType.q4_0: F32, DType.q4_1: F32}


def storage_type(dtype: DType) -> ir.Type:
    """How an element of `dtype` sits in memory."""
    return _STORAGE[dtype]


def compute_type(dtype: DType) -> ir.Type:
    """How an element of `dtype` is held in registers (f16/bf16 widen to f32)."""
    return _COMPUTE[dtype]


def constant(dtype: DType, value) -> ir.Constant:
    """`value` as a compute value of `dtype` (a bool is true for any nonzero value)."""
    if dtype.is_float:
        return ir.Constant(F32, float(value))
    if dtype == DType.bool:
        return ir.Constant(I1, int(bool(value)))
    return ir.Constant(compute_type(dtype), int(value))


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, int(value))


def round_to(b: ir.IRBuilder, value: ir.Value, dtype: DType) -> ir.Value:
    """An f32 value rounded to the precision of a narrower float dtype (kept as f32)."""
    if dtype in (DType.f16, DType.bf16):
        return to_compute(b, to_storage(b, value, dtype), dtype)
    return value


def _bf16_bits(b: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """Round-to-nearest-even f32 -> bf16 bits (NaN stays NaN)."""
    bits = b.bitcast(value, I32)
    lsb = b.and_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
    rounded = b.lshr(b.add(bits, b.add(lsb, ir.Constant(I32, 0x7FFF))), ir.Constant(I32, 16))
    is_nan = b.fcmp_unordered("uno", value, value)
    return b.trunc(b.select(is_nan, ir.Constant(I32, 0x7FC0), rounded), I16)


def like(value: ir.Value, scalar: ir.Type) -> ir.Type:
    """`scalar`, or a vector of it as wide as `value` is."""
    return ir.VectorType(scalar, value.type.count) if isinstance(value.type, ir.VectorType) else scalar


def splat(value: ir.Value, scalar: ir.Type, constant) -> ir.Constant:
    """The constant in every lane of a value shaped like `value` (a scalar for a scalar)."""
    kind = like(value, scalar)
    return ir.Constant(kind, [constant] * kind.count if isinstance(kind, ir.VectorType) else constant)


def to_compute(b: ir.IRBuilder, stored: ir.Value, dtype: DType) -> ir.Value:
    """A stored value (or vector of them) in its compute type."""
    if dtype == DType.f16:
        return b.fpext(stored, like(stored, F32))
    if dtype == DType.bf16:
        return b.bitcast(b.shl(b.zext(stored, like(stored, I32)), splat(stored, I32, 16)), like(stored, F32))
    if dtype == DType.bool:
        return b.icmp_unsigned("!=", stored, splat(stored, I8, 0))
    return stored


def to_storage(b: ir.IRBuilder, value: ir.Value, dtype: DType) -> ir.Value:
    if dtype == DType.f16:
        return b.fptrunc(value, F16)
    if dtype == DType.bf16:
        return _bf16_bits(b, value)
    if dtype == DType.bool:
        return b.zext(value, I8)
    return value


def element_ptr(b: ir.IRBuilder, base: ir.Value, index: ir.Value) -> ir.Value:
    """The address of element `index` of a buffer; in a checked body, an index outside a buffer
    argument sets OUT_OF_BOUNDS and gives a scratch element instead."""
    bounds = _CHECKED.get(b.function)
    span = bounds.spans.get(base) if bounds is not None else None
    if span is None:
        return b.gep(base, [index], inbounds=True)
    bad = b.icmp_unsigned(">=", index, i64(span))
    b.store(b.select(bad, ir.Constant(I32, OUT_OF_BOUNDS), b.load(bounds.status)), bounds.status)
    inside = b.gep(base, [b.select(bad, i64(0), index)])
    return b.select(bad, b.bitcast(bounds.scratch, base.type), inside)


def prefetch(b: ir.IRBuilder, pointer: ir.Value, write: bool = False) -> None:
    """Ask for the cache line at `pointer` (any address: a prefetch never faults), to be read or written."""
    intrinsic = b.module.globals.get("llvm.prefetch.p0i8") or ir.Function(
        b.module, ir.FunctionType(ir.VoidType(), [VOIDP, I32, I32, I32]), "llvm.prefetch.p0i8")
    b.call(intrinsic, [b.bitcast(pointer, VOIDP), ir.Constant(I32, int(write)), ir.Constant(I32, 3), ir.Constant(I32, 1)])


def _scratch(module: ir.Module) -> ir.GlobalVariable:
    """Where a checked body's out-of-bounds accesses go: 64 bytes that no buffer owns."""
    existing = module.globals.get("rduflow.scratch")
    if existing is not None:
        return existing
    scratch = ir.GlobalVariable(module, ir.ArrayType(I64, 8), "rduflow.scratch")
    scratch.linkage = "internal"
    scratch.initializer = ir.Constant(ir.ArrayType(I64, 8), None)
    return scratch


def load(b: ir.IRBuilder, base: ir.Value, index: ir.Value, dtype: DType) -> ir.Value:
    """Element `index` of a typed buffer pointer, in its compute type."""
    if dtype.is_blocked:
        return load_blocked(b, base, index, dtype)
    return to_compute(b, b.load(element_ptr(b, base, index)), dtype)


def broadcast_half(b: ir.IRBuilder, pointer: ir.Value, lanes: int) -> ir.Value:
    """The f16 at byte pointer `pointer` as f32 in each of `lanes` (at most 8 or 16) lanes, moved
    into a zeroed register first: converting it in place would merge into whatever register
    holds stale lanes, an accumulator's included."""
    bits = b.zext(b.load(b.bitcast(pointer, I16.as_pointer()), align=1), I32)
    words = b.insert_element(ir.Constant(ir.VectorType(I32, 8), None), bits, ir.Constant(I32, 0))
    halves = b.bitcast(b.shuffle_vector(words, words, ir.Constant(ir.VectorType(I32, 4), [0, 1, 2, 3])),
                       ir.VectorType(F16, 8))
    return b.shuffle_vector(b.fpext(halves, ir.VectorType(F32, 8)), ir.Constant(ir.VectorType(F32, 8), ir.Undefined),
                            ir.Constant(ir.VectorType(I32, lanes), None))


def load_blocked(b: ir.IRBuilder, base: ir.Value, index: ir.Value, dtype: DType, lanes: int = 1) -> ir.Value:
    """Element `index` of a block-quantized buffer (a byte pointer) dequantized to f32 as `ir.dtypes`
    defines it, or with `lanes` > 1 the vector of elements `index` to `index + lanes` (a run within
    one block). The products d * q are exact, so q4_1's fused d * q + m rounds as the separate one."""
    position = b.and_(index, i64(31))
    start = b.mul(b.lshr(index, i64(5)), i64(dtype.itemsize))
    vector = lanes > 1

    def codes(offset: ir.Value) -> ir.Value:
        pointer = element_ptr(b, base, b.add(start, offset))
        return b.load(b.bitcast(pointer, ir.VectorType(I8, lanes).as_pointer()), align=1) if vector else b.load(pointer)

    def half(offset: int) -> ir.Value:
        pointer = element_ptr(b, base, b.add(start, i64(offset)))
        if vector:
            return broadcast_half(b, pointer, lanes)
        return b.fpext(b.load(b.bitcast(pointer, F16.as_pointer()), align=1), F32)

    fused = ("contract",)
    if dtype == DType.q8_0:
        raw = codes(b.add(position, i64(2)))
        return b.fmul(half(0), b.sitofp(raw, like(raw, F32)))
    raw = codes(b.add(b.and_(position, i64(15)), i64(2 if dtype == DType.q4_0 else 4)))
    packed = b.zext(raw, like(raw, I32))  # one widening serves both nibbles of a run's bytes
    high = b.icmp_unsigned(">=", position, i64(16))
    nibbles = b.select(high, b.lshr(packed, splat(packed, I32, 4)), b.and_(packed, splat(packed, I32, 15)))
    code = b.uitofp(nibbles, like(packed, F32))
    if dtype == DType.q4_0:
        return b.fmul(half(0), b.fsub(code, splat(code, F32, 8.0)))
    return b.fadd(b.fmul(half(0), code, flags=fused), half(2), flags=fused)


def store(b: ir.IRBuilder, value: ir.Value, base: ir.Value, index: ir.Value, dtype: DType) -> None:
    b.store(to_storage(b, value, dtype), element_ptr(b, base, index))


@contextlib.contextmanager
def loop(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int, step: int = 1,
         name: str = "i") -> Iterator[ir.Value]:
    """`for (i = start; i < stop; i += step)` on i64; yields `i`."""
    start = i64(start) if isinstance(start, int) else start
    stop = i64(stop) if isinstance(stop, int) else stop
    index, _, head, body, done = loop_head(b, start, name)
    b.cbranch(b.icmp_signed("<", index, stop), body, done)
    b.position_at_end(body)
    yield index
    index.add_incoming(b.add(index, i64(step), flags=["nsw"]), b.block)
    b.branch(head)
    b.position_at_end(done)


def loop_head(b: ir.IRBuilder, start: ir.Value,
              name: str) -> tuple[ir.PhiInstr, ir.Block, ir.Block, ir.Block, ir.Block]:
    """(index, pre, head, body, done): blocks `name`.head, .body and .done after the current one
    (`pre`), the builder at the head with an i64 phi entered as `start`; the caller writes the
    loop's test and back edge."""
    pre = b.block
    head, body, done = (b.append_basic_block(f"{name}.{part}") for part in ("head", "body", "done"))
    b.branch(head)
    b.position_at_end(head)
    index = b.phi(I64, name=name)
    index.add_incoming(start, pre)
    return index, pre, head, body, done


def imin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def imax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed(">", x, y), x, y)


def unravel(b: ir.IRBuilder, flat: ir.Value, shape: Sequence[int]) -> list[ir.Value]:
    """Row-major multi-index of a flat i64 index over `shape`."""
    indices = []
    for dim in reversed(shape):
        indices.append(b.urem(flat, i64(dim)))
        flat = b.udiv(flat, i64(dim))
    return indices[::-1]


def affine(b: ir.IRBuilder, offset: int, terms: Sequence[tuple[ir.Value, int]]) -> ir.Value:
    """offset + sum(index * coefficient), skipping zero coefficients."""
    total: ir.Value = i64(offset)
    for index, coeff in terms:
        if coeff == 1:
            total = b.add(total, index)
        elif coeff:
            total = b.add(total, b.mul(index, i64(coeff)))
    return total


Body = Callable[[ir.IRBuilder, list[ir.Value], ir.Value, ir.Value], ir.Value | None]


def kernel_function(module: ir.Module, name: str, arg_types: Sequence[ir.Type], body: Body,
                    noalias: Sequence[bool] | None = None, spans: Sequence[int] | None = None,
                    pointer: Sequence[int] | None = None) -> ir.Function:
    """Emit an exported kernel `name` whose body sees typed `noalias` buffer pointers.

    `body(b, ptrs, lo, hi)` fills in the inner function; it may return an i32 status
    (0 = ok) or None. With `spans` (elements per buffer), every load and store through
    `element_ptr` is bounds-checked and an access outside its buffer returns OUT_OF_BOUNDS.
    With `pointer`, buffer i is accessed through argument `pointer[i]` (one of its dtype at its bytes).
    """
    ptr_types = [t.as_pointer() for t in arg_types]
    inner_ty = ir.FunctionType(I32, [*ptr_types, I64, I64])
    inner = ir.Function(module, inner_ty, f"{name}.body")
    inner.linkage = "internal"
    inner.attributes.add("alwaysinline")
    inner.attributes.add("nounwind")
    for i, arg in enumerate(inner.args[:len(ptr_types)]):
        if noalias is None or noalias[i]:
            arg.add_attribute("noalias")
    b = ir.IRBuilder(inner.append_basic_block("entry"))
    if spans is not None:
        bounds = _CHECKED[inner] = _Bounds(dict(zip(inner.args, spans)), b.alloca(I32), _scratch(module))
        b.store(ir.Constant(I32, 0), bounds.status)
    args = inner.args[:-2]
    ptrs = [args[j] for j in pointer] if pointer is not None else list(args)
    status = body(b, ptrs, inner.args[-2], inner.args[-1])
    status = status if status is not None else ir.Constant(I32, 0)
    if spans is not None:
        found = b.load(bounds.status)
        status = b.select(b.icmp_unsigned("!=", found, ir.Constant(I32, 0)), found, status)
    b.ret(status)

    outer = ir.Function(module, ir.FunctionType(I32, [VOIDP.as_pointer(), I64, I64]), name)
    outer.attributes.add("nounwind")
    args, lo, hi = outer.args
    args.add_attribute("noalias")
    b = ir.IRBuilder(outer.append_basic_block("entry"))
    ptrs = [b.bitcast(b.load(b.gep(args, [i64(i)], inbounds=True)), pt) for i, pt in enumerate(ptr_types)]
    b.ret(b.call(inner, [*ptrs, lo, hi]))
    return outer


_VECTOR = re.compile(r"<(\d+) x (float|half|bfloat|double|i\d+)>")
_BITS = {"float": 32, "half": 16, "bfloat": 16, "double": 64}


def limit_vector_width(module: ir.Module) -> None:
    """Give every defined function LLVM's `min-legal-vector-width`: the widest vector its own code
    names. Auto-vectorized code then stays in 256-bit registers (the host's preferred width) even
    where a 64-bit index would need 512 (an i64 index compare in a float map: 2.7x slower with it
    on zmm), while explicitly 512-bit kernels (16-lane gemm tiles) keep them. Inlining a function
    into another merges the widths (the larger wins); llvmlite knows only enum attributes."""
    for fn in module.functions:
        if not fn.is_declaration:
            found = [int(n) * (_BITS[t] if t in _BITS else int(t[1:])) for n, t in _VECTOR.findall(str(fn))]
            set.add(fn.attributes, f'"min-legal-vector-width"="{max(found, default=0)}"')


def internal_function(module: ir.Module, name: str, ret: ir.Type, params: Sequence[ir.Type]) -> tuple[ir.Function, bool]:
    """An internal always-inline helper: (function, True if it still needs a body)."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing, False
    fn = ir.Function(module, ir.FunctionType(ret, list(params)), name)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    fn.attributes.add("nounwind")
    return fn, True


def intrinsic(b: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
    """Call an overloaded LLVM intrinsic on values of one type (e.g. `llvm.sqrt`)."""
    ty = args[0].type
    fn = b.module.declare_intrinsic(name, [ty], ir.FunctionType(ty, [a.type for a in args]))
    return b.call(fn, list(args))
