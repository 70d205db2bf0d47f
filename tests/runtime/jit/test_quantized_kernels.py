"""Block-quantized weights (q8_0, q4_0, q4_1) in the JIT: the dequantizing load against the
`gguf` package's reference, and gemv/gemm stages reading blocks against float64 sums of the
dequantized weights, awkward sizes, bit for bit the same on 1, 2 and 3 threads and any cut; gathers
of rows of blocks (a tied embedding) byte for byte."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as ggml_dequantize
from gguf.quants import quantize as ggml_quantize

from backend.pef.program import KernelProgram
from backend.pef.records import Access, Buffer, row_major
from backend.pef.reference import run_kernel
from backend.pef.stages import GatherStage
from backend.pef.validate import validate
from ir.dtypes import DType, as_blocks, convert, dequantize, quantize
from runtime.jit import engine, gemv
from runtime.jit.codegen import INDEX_ERROR
from runtime.jit.host import tile_for
from runtime.jit.kernel import lower_program
from runtime.jit.library import Jit
from runtime.jit.parallel import Parallel
from test_gemm_tiles import inner_loop
from test_gemv_paths import JIT, call, extent, gemm_of, program, takes_gemv

BLOCKED = [DType.q8_0, DType.q4_0, DType.q4_1]


@pytest.mark.parametrize("dtype", BLOCKED)
def test_quantize_and_dequantize_are_ggml_s(dtype):
    """The bytes are the gguf package's; the blocks' sizes are GGUF's (34, 18, 20 bytes per 32)."""
    x = np.random.default_rng(1).standard_normal((5, 96)).astype(np.float32) * 3
    ggml = GGMLQuantizationType[dtype.value.upper()]
    blocks = quantize(x, dtype)
    assert blocks.shape == (5, 3) and blocks.nbytes == 15 * {"q8_0": 34, "q4_0": 18, "q4_1": 20}[dtype.value]
    np.testing.assert_array_equal(blocks.view(np.uint8), ggml_quantize(x, ggml))
    np.testing.assert_array_equal(dequantize(blocks), ggml_dequantize(ggml_quantize(x, ggml), ggml))
    assert np.abs(dequantize(blocks) - x).max() <= {"q8_0": 0.05, "q4_0": 1.0, "q4_1": 0.6}[dtype.value]
    np.testing.assert_array_equal(convert(dequantize(blocks), DType.f32), dequantize(blocks))


def test_nibble_order_and_offsets_are_ggml_s():
    """q4_0: d = 1, byte j = j | (15 - j) << 4 -> elements j - 8 then 7 - j; q4_1 adds m; q8_0 d * q."""
    codes = np.array([j | (15 - j) << 4 for j in range(16)], np.uint8)
    one, half = np.float16(1).tobytes(), np.float16(0.5).tobytes()
    q4_0 = as_blocks(np.frombuffer(one + codes.tobytes(), np.uint8)[None], DType.q4_0)
    np.testing.assert_array_equal(dequantize(q4_0)[0], [*range(-8, 8), *range(7, -9, -1)])
    q4_1 = as_blocks(np.frombuffer(half + one + codes.tobytes(), np.uint8)[None], DType.q4_1)
    np.testing.assert_array_equal(dequantize(q4_1)[0], np.array([*range(16), *range(15, -1, -1)]) * 0.5 + 1)
    q8 = as_blocks(np.frombuffer(half + np.arange(-16, 16, dtype=np.int8).tobytes(), np.uint8)[None], DType.q8_0)
    np.testing.assert_array_equal(dequantize(q8)[0], np.arange(-16, 16) * 0.5)


def operands(prog: KernelProgram, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {buf.name: convert(rng.standard_normal(buf.shape).astype(np.float32), DType(buf.dtype))
            for buf in prog.buffers if buf.role == "input"}


def reference(prog: KernelProgram, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(float64 a @ dequantized B, bound on the f32 summation error)."""
    (stage,) = prog.stages
    a, b = inputs["a"].astype(np.float64), dequantize(inputs["b"]).astype(np.float64)
    if stage.b.strides[-1] != 1:
        b = b.T
    return a @ b, 2 * stage.k * 2.0 ** -24 * (np.abs(a) @ np.abs(b)) + 1e-30


def check(prog: KernelProgram, seed: int, threads=(1, 2, 3)) -> np.ndarray:
    inputs = operands(prog, seed)
    results = [call(prog, inputs, threads=t) for t in threads]
    exact, bound = reference(prog, inputs)
    error = np.abs(results[0].astype(np.float64) - exact)
    assert np.all(error <= bound), f"max error {error.max()}"
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    units = extent(prog)
    for cuts in ([0, units], list(range(units + 1))):
        np.testing.assert_array_equal(call(prog, inputs, cuts), results[0])
    return results[0]


#: m, k, n with the blocked (stored last) axis a multiple of 32: decode rows (gemv) and prefill (gemm)
SHAPES = [(1, 32, 1), (1, 96, 97), (3, 160, 257), (4, 1536, 160), (1, 576, 1536), (1, 3072, 768),
          (5, 64, 33), (37, 192, 131), (130, 96, 320)]


@pytest.mark.parametrize("dtype", BLOCKED)
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_llama_layout_blocks_along_the_depth(dtype, m, k, n):
    """B stored [n, k] (Linear weights): blocks run along the reduction axis; rows of a decode step
    take the vectorized block-dot path."""
    prog = program(m, k, n, True, dtype)
    assert (takes_gemv(prog) is not None) == (m <= 4)
    assert gemv.reads_blocks(gemm_of(prog)) or m > 4
    check(prog, seed=m + k + n)


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("dtype", BLOCKED)
@pytest.mark.parametrize("m, k, n", [(1, 576, 97), (3, 160, 257), (4, 1536, 33), (32, 576, 97), (37, 192, 131)])
def test_blocks_on_either_vector_width(lanes, dtype, m, k, n):
    """Decode rows (the block-dot path: blocks widened into 8 lanes by in-lane shifts, lanes
    permuted, or into 16 by byte extensions, in order) and prefill rows (the blocked gemm, whose
    full B slivers pack runs of a block by in-register transposes), on 8 and 16 lanes whichever
    this host has: against the float64 sums, the same bits on 1 and 2 threads."""
    jit = Jit(use_cache=False, tile=tile_for(lanes, 32 if lanes == 16 else 16))
    prog = program(m, k, n, True, dtype)
    inputs = operands(prog, seed=lanes + m)
    got = call(prog, inputs, jit=jit)
    exact, bound = reference(prog, inputs)
    error = np.abs(got.astype(np.float64) - exact)
    assert np.all(error <= bound), f"max error {error.max()}"
    np.testing.assert_array_equal(call(prog, inputs, threads=2, jit=jit), got)


@pytest.mark.parametrize("cpu,lanes", [("haswell", 8), ("skylake-avx512", 16), ("znver5", 16)])
def test_block_dot_assembly_widens_a_block_in_a_few_instructions(cpu, lanes):
    """q8_0 on the host's vector width: the inner loop over blocks holds one FMA per vector of the
    block (4 of 8 lanes, 2 of 16), sign-extends bytes with one instruction per 16 codes on AVX-512,
    asks for B's lines ahead, and keeps its sums in registers."""
    prog = program(1, 576, 1536, True, DType.q8_0)
    module, _ = lower_program(prog, "asm", tile=tile_for(lanes, 32 if lanes == 16 else 16))
    loop = inner_loop(engine.assembly(module.ir_text(), cpu=cpu))
    register = "zmm" if lanes == 16 else "ymm"
    fmas = [x for x in loop if "vfmadd" in x]
    assert len(fmas) == 32 // lanes and all(register in x for x in fmas)
    assert len([x for x in loop if "vpmovsxbd" in x]) == (2 if lanes == 16 else 0)
    assert [x for x in loop if "prefetch" in x] and not [x for x in loop if "(%rsp)" in x]


@pytest.mark.parametrize("dtype", BLOCKED)
@pytest.mark.parametrize("m, k, n", [(1, 97, 64), (2, 1536, 768), (4, 13, 4096 + 32), (33, 100, 96),
                                     (1, 3072, 768), (3, 21, 8192), (1, 768, 2304)])
def test_conv1d_layout_blocks_along_the_columns(dtype, m, k, n):
    """B stored [k, n] (GPT-2's Conv1D weights): blocks run along the output axis, split depths too;
    chunks of whole blocks of columns take the vectorized rows pass (4128 columns: chunks of 2064 do not)."""
    prog = program(m, k, n, False, dtype)
    gemm = gemm_of(prog)
    assert not gemv.reads_blocks(gemm)
    if m <= gemv.ROWS:
        assert gemv.column_blocks(gemm, gemv.split(gemm)) == (n != 4096 + 32)
    check(prog, seed=m * k)


@pytest.mark.parametrize("dtype", BLOCKED)
def test_batched_decode_rows_share_blocks(dtype):
    """A decode step of batch 3 sharing B (rows folded), and B per batch entry."""
    for shared in (True, False):
        prog = program(1, 320, 70, True, dtype, batch=(3,), shared_b=shared, epilogue=True)
        assert gemv.reads_blocks(gemm_of(prog))
        inputs = operands(prog, 5)
        (stage,) = prog.stages
        a, b = inputs["a"].astype(np.float64), dequantize(inputs["b"]).astype(np.float64)
        exact = np.maximum(a @ np.swapaxes(b, -1, -2) + inputs["bias"], 0) + inputs["res"]
        got = [call(prog, inputs, threads=t) for t in (1, 2)]
        np.testing.assert_array_equal(got[0], got[1])
        np.testing.assert_allclose(got[0], exact, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", BLOCKED)
def test_the_kernel_program_reference_reads_blocks_as_the_jit_does(dtype):
    for m, transposed in ((1, True), (2, False), (9, True)):
        prog = program(m, 96, 64, transposed, dtype, epilogue=True)
        inputs = operands(prog, m)
        np.testing.assert_allclose(call(prog, inputs), run_kernel(prog, inputs)["out"], rtol=1e-5, atol=1e-5)


def gather_program(table_shape: tuple[int, ...], ids_shape: tuple[int, ...], axis: int, dtype: DType) -> KernelProgram:
    """out = take(table, ids, axis), the table and out in blocks along their last axis."""
    out_shape = (*table_shape[:axis], *ids_shape, *table_shape[axis + 1:])
    buffers = (Buffer("table", "input", table_shape, str(dtype)), Buffer("ids", "input", ids_shape, "i32"),
               Buffer("out", "output", out_shape, str(dtype)))
    stage = GatherStage("out", Access("table", 0, row_major(table_shape)), table_shape,
                        Access("ids", 0, row_major(ids_shape)), ids_shape, axis)
    prog = KernelProgram("gather", "gather", None, "", buffers, (stage,))
    validate(prog)
    return prog


def gather(prog: KernelProgram, table: np.ndarray, ids: np.ndarray, threads: int) -> tuple[int, np.ndarray]:
    """(status, out) of the gather run on `threads` threads."""
    (native,) = JIT.load([prog])
    (stage,) = native.stages
    out_buf = prog.buffer("out")
    out = np.zeros(DType(out_buf.dtype).storage_shape(out_buf.shape), DType(out_buf.dtype).np)
    args = (ctypes.c_void_p * 3)(table.ctypes.data, ids.ctypes.data, out.ctypes.data)
    return Parallel(threads).run(stage.fn, args, stage.plan.extent, stage.plan.work, stage.plan.pieces), out


@pytest.mark.parametrize("dtype", BLOCKED)
@pytest.mark.parametrize("table_shape, ids_shape, axis", [((7, 96), (2, 5), 0), ((3, 11, 64), (4,), 1),
                                                          ((49, 32), (1, 1), 0), ((5, 2, 160), (3, 2), 0)])
def test_a_gather_of_blocks_copies_the_rows_bytes(dtype, table_shape, ids_shape, axis):
    """An embedding in blocks (a tied LM head): the gathered rows are the table's blocks, byte for
    byte, on 1, 2 and 3 threads, and dequantize to the rows of the dequantized table."""
    rng = np.random.default_rng(len(table_shape) + axis)
    table = quantize(rng.standard_normal(table_shape).astype(np.float32), dtype)
    ids = rng.integers(0, table_shape[axis], ids_shape).astype(np.int32)
    prog = gather_program(table_shape, ids_shape, axis, dtype)
    for threads in (1, 2, 3):
        status, out = gather(prog, table, ids, threads)
        assert status == 0
        np.testing.assert_array_equal(out.view(np.uint8), np.take(table, ids, axis=axis).view(np.uint8))
        np.testing.assert_array_equal(dequantize(out), np.take(dequantize(table), ids, axis=axis))
    bad = ids.copy()
    bad.flat[-1] = table_shape[axis]
    assert gather(prog, table, bad, 2)[0] == INDEX_ERROR
