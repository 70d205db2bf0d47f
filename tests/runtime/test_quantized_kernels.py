"""Block-quantized weights (q8_0, q4_0, q4_1) in the JIT: the dequantizing load against the
`gguf` package's reference, and gemv/gemm stages reading blocks against float64 sums of the
dequantized weights, awkward sizes, bit for bit the same on 1, 2 and 3 threads and any cut."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as ggml_dequantize
from gguf.quants import quantize as ggml_quantize

from backend.pef.program import KernelProgram
from backend.pef.reference import run_kernel
from ir.dtypes import DType, as_blocks, convert, dequantize, quantize
from runtime.jit import gemv
from test_gemv_paths import call, extent, gemm_of, program, takes_gemv

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


@pytest.mark.parametrize("dtype", BLOCKED)
@pytest.mark.parametrize("m, k, n", [(1, 97, 64), (2, 1536, 768), (4, 13, 4096 + 32), (33, 100, 96)])
def test_conv1d_layout_blocks_along_the_columns(dtype, m, k, n):
    """B stored [k, n] (GPT-2's Conv1D weights): blocks run along the output axis, split depths too."""
    prog = program(m, k, n, False, dtype)
    assert not gemv.reads_blocks(gemm_of(prog))
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
