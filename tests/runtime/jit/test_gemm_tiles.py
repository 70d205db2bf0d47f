"""The gemm's host-shaped micro-kernels: the tile chosen from vector registers and cache sizes,
and, for the AVX2 shape and the AVX-512 shape alike (forced here: LLVM splits its 16-lane
vectors into pairs on an AVX2 host, slower but exact), results against numpy on awkward
sizes, 16-bit operands, fused epilogues, convolutions and thread counts, and the assembly
an AVX-512 CPU would get."""
from __future__ import annotations

import math
import re

import llvmlite.binding as llvm
import numpy as np
import pytest

from backend.pef.program import KernelProgram
from backend.pef.records import Access, Buffer
from backend.pef.stages import GemmStage
from backend.lowering import lower_graph
from compiler.passes import PassManager
from ir.builder import Builder
from ir.dtypes import DType, bf16, f16, f32
from ir.interpreter import interpret
from ir.types import TensorType
from kernels import run_kernels
from runtime.jit import engine
from runtime.jit.gemm import SMALL, depth_block
from runtime.jit.gemv import ROWS
from runtime.jit.host import UNROLL, Tile, cache_sizes, host_tile, tile_for, vector_registers
from runtime.jit.kernel import lower_program
from runtime.jit.library import Jit
from runtime.jit.parallel import Parallel

RNG = np.random.default_rng(23)
ZEN3_CACHES = (32 << 10, 512 << 10, 32 << 20)
ZEN5_CACHES = (48 << 10, 1 << 20, 32 << 20)
TILES = {
    "avx2": tile_for(8, 16, ZEN3_CACHES),
    "avx512": tile_for(16, 32, ZEN5_CACHES),
    # tiny cache blocks: every edge of every block, on small matrices
    "avx2-small-blocks": Tile(8, 6, 16, kc=12, mc=18, nc=48),
    "avx512-small-blocks": Tile(16, 14, 32, kc=8, mc=28, nc=64),
}


@pytest.fixture(scope="module", params=list(TILES))
def jit(request) -> Jit:
    """A JIT whose gemms take one tile (no disk cache: every kernel built with that tile)."""
    return Jit(use_cache=False, tile=TILES[request.param])


def test_register_tiles_fit_the_register_file():
    """Accumulators, B vectors and a broadcast fit the registers, with enough independent
    accumulators to cover FMA latency on two pipes (>= 8)."""
    assert (tile_for(8, 16).mr, tile_for(8, 16).nr) == (6, 16)
    assert (tile_for(16, 32).mr, tile_for(16, 32).nr) == (8, 48)
    for lanes, registers in ((4, 16), (8, 16), (16, 32)):
        t = tile_for(lanes, registers)
        accumulators, vectors = t.mr * t.nr // t.lanes, t.nr // t.lanes
        assert accumulators + vectors + 1 <= registers and accumulators >= 8


def test_cache_blocks_follow_the_cache_sizes():
    """A B sliver in half of L1 (8 lanes) or an eighth of L2 (16, a depth of a multiple of 32), the A
    block in half of L2, the B panel in half of L3 (at most 4096 columns)."""
    assert TILES["avx2"] == Tile(8, 6, 16, kc=256, mc=252, nc=4096)
    assert TILES["avx512"] == Tile(16, 8, 48, kc=672, mc=192, nc=4080)
    assert tile_for(16, 32, (48 << 10, 2 << 20, 480 << 20)) == Tile(16, 8, 48, kc=1344, mc=192, nc=4080)
    small = tile_for(8, 16, (16 << 10, 128 << 10, 1 << 20))
    assert (small.kc, small.mc, small.nc) == (128, 126, 1024)


@pytest.mark.parametrize("features,expected", [
    ("+avx,+avx2,+fma,-avx512f", (8, 16)), ("+avx2,+avx512f,+avx512bw", (16, 32)),
    ("+sse4.2,-avx,-avx2", (4, 16)), ("", (4, 16))])
def test_vector_registers_from_llvm_features(features, expected):
    assert vector_registers(features) == expected


def test_cache_sizes_from_the_os(tmp_path):
    for index, (level, kind, size) in enumerate(
            [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "1024K"), (3, "Unified", "32M")]):
        (tmp_path / f"index{index}").mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / f"index{index}" / name).write_text(f"{value}\n")
    assert cache_sizes(tmp_path) == ZEN5_CACHES
    (tmp_path / "index3" / "size").write_text("garbage\n")
    assert cache_sizes(tmp_path) == (48 << 10, 1 << 20, 8 << 20)  # level 3 falls back
    assert cache_sizes(tmp_path / "missing") == (32 << 10, 512 << 10, 8 << 20)


@pytest.mark.parametrize("k,kc,block", [
    (3072, 1344, 1024), (2048, 1344, 1024), (2304, 1344, 1152), (50257, 1344, 1344), (768, 1344, 768),
    (33, 12, 12), (513, 256, 192)])
def test_the_depth_splits_into_the_fewest_blocks_of_about_equal_depth(k, kc, block):
    """As few blocks as `kc` allows, each a multiple of kc's common factor with a quantized block (32)."""
    assert depth_block(k, kc) == block and math.ceil(k / block) == math.ceil(k / kc)
    assert block % math.gcd(kc, 32) == 0 or block == k


def test_a_three_vector_tile_has_a_narrow_variant_with_as_many_accumulators():
    assert TILES["avx512"].narrow() == Tile(16, 12, 32, kc=672, mc=192, nc=4064)
    assert TILES["avx2"].narrow() is None and TILES["avx512-small-blocks"].narrow() is None


@pytest.mark.parametrize("batch,m,n,extent", [
    (48, 128, 64, 48 * 11),  # an attention product: 64 columns pad to 96 on 8 x 48, not at all on 12 x 32
    (48, 128, 128, 48 * 11),  # 128 columns pad to 144 on 8 x 48; 132 x 128 on 12 x 32 is 8% less
    (1, 512, 768, 16),  # 516 rows on 12 x 32: the wide tile, split by columns
    (1, 768, 768, 96),  # no padding either way: the wide tile, split by rows
    (1, 32, 576, 12),  # a prefill's 32 rows pad to 36 on 12 x 32: the wide tile
])
def test_products_take_the_tile_that_pads_them_least(batch, m, n, extent):
    """The narrow tile where it pads C by more than 1/32 less, seen in the parallel extent: the
    tile's row slivers per batch entry (its column slivers where C is wider than tall)."""
    buffers = (Buffer("a", "input", (batch, m, 64), "f32"), Buffer("b", "input", (batch, 64, n), "f32"),
               Buffer("c", "output", (batch, m, n), "f32"))
    stage = GemmStage("c", (batch,), m, n, 64, Access("a", 0, (m * 64, 64, 1)), Access("b", 0, (64 * n, n, 1)))
    _, (plan,) = lower_program(KernelProgram("gemm", "matmul", None, "", buffers, (stage,)), "tiles",
                               tile=TILES["avx512"])
    assert plan.extent == extent


@pytest.mark.parametrize("shape_a,shape_b,attrs", [
    ((48, 128, 64), (48, 128, 64), {"transpose_b": True}),  # scores = Q K^T
    ((48, 128, 128), (48, 128, 64), {}),  # P V
    ((48, 128, 128), (48, 128, 64), {"transpose_a": True}),  # dV = P^T dO
])
def test_batched_attention_products(jit, shape_a, shape_b, attrs):
    """Attention-shaped batched products (the narrow tile's on AVX-512) as numpy's, the same bits on 1 and 2 threads."""
    graph, inputs = matmul_graph(shape_a, shape_b, **attrs)
    runs = [run_kernels(graph, inputs, jit=jit, parallel=Parallel(t))[0]["c"] for t in (1, 2)]
    a, b = (inputs[x].astype(np.float64) for x in "ab")
    a = a.transpose(0, 2, 1) if attrs.get("transpose_a") else a
    exact = a @ (b.transpose(0, 2, 1) if attrs.get("transpose_b") else b)
    np.testing.assert_allclose(runs[0], exact, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(runs[1], runs[0])


def test_the_host_tile_is_the_one_for_its_features_and_caches():
    llvm.initialize_native_target()
    features = llvm.get_host_cpu_features().flatten()
    assert host_tile() == tile_for(*vector_registers(features), cache_sizes())


def matmul_graph(a_shape, b_shape, dtype=f32, **attrs):
    b = Builder()
    b.output("c", b.matmul(b.input("a", TensorType(a_shape, dtype)), b.input("b", TensorType(b_shape, dtype)),
                           **attrs))
    inputs = {"a": RNG.standard_normal(a_shape).astype(dtype.np), "b": RNG.standard_normal(b_shape).astype(dtype.np)}
    return b.graph, inputs


def blocked(graph) -> GemmStage:
    """The graph's one gemm stage, asserting it takes the blocked path (not the loop nest or gemv)."""
    (stage,) = [s for p in lower_graph(graph) for s in p.stages]
    assert stage.m * stage.n * stage.k >= SMALL and stage.m > ROWS
    return stage


@pytest.mark.parametrize("m,k,n", [
    (7, 17, 1000), (33, 1000, 17), (1000, 33, 7), (17, 1000, 33), (1000, 1, 33), (1000, 1000, 1),
    (5, 33, 4100), (700, 300, 50), (131, 257, 97)])
def test_gemm_matches_numpy_on_awkward_sizes(jit, m, k, n):
    graph, inputs = matmul_graph((m, k), (k, n))
    blocked(graph)
    got = run_kernels(graph, inputs, jit=jit)[0]["c"]
    exact = inputs["a"].astype(np.float64) @ inputs["b"].astype(np.float64)
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-5 * math.sqrt(k) * 10)


@pytest.mark.parametrize("attrs", [{"transpose_a": True}, {"transpose_b": True}])
def test_gemm_reads_transposed_operands(jit, attrs):
    a_shape = (301, 77) if attrs.get("transpose_a") else (77, 301)
    b_shape = (45, 301) if attrs.get("transpose_b") else (301, 45)
    graph, inputs = matmul_graph(a_shape, b_shape, **attrs)
    blocked(graph)
    a, b = (inputs[n].astype(np.float64) for n in "ab")
    exact = (a.T if attrs.get("transpose_a") else a) @ (b.T if attrs.get("transpose_b") else b)
    np.testing.assert_allclose(run_kernels(graph, inputs, jit=jit)[0]["c"], exact, rtol=1e-4, atol=1e-4)


def assert_numpy_product_on_1_and_2_threads(jit, graph, inputs, dtype, transpose_b: bool = False) -> None:
    """The product within f32 rounding of the exact one (and one unit of a 16-bit output), the
    same bits on 1 and 2 threads."""
    runs = [run_kernels(graph, inputs, jit=jit, parallel=Parallel(t))[0]["c"] for t in (1, 2)]
    b = inputs["b"].astype(np.float64)
    exact = inputs["a"].astype(np.float64) @ (b.T if transpose_b else b)
    k = inputs["a"].shape[-1]
    unit = np.spacing(np.abs(exact).astype(dtype.np)).astype(np.float64) if dtype != f32 else 0
    assert np.all(np.abs(runs[0].astype(np.float64) - exact) <= 1e-4 * math.sqrt(k) + unit + 1e-4 * np.abs(exact))
    np.testing.assert_array_equal(runs[1], runs[0])


@pytest.mark.parametrize("dtype", [f32, bf16, f16], ids=str)
@pytest.mark.parametrize("m,k,n", [(32, 576, 96), (7, 17, 1000), (33, 1000, 17), (131, 257, 97), (5, 33, 4100)])
def test_b_contiguous_along_the_depth_packs_by_transposes(jit, dtype, m, k, n):
    """B stored [n, k] (a Linear weight): full slivers pack by in-register transposes of a vector
    width of depth steps, the depth left over and the edge sliver element by element; the
    product as numpy's, the same bits on 1 and 2 threads."""
    graph, inputs = matmul_graph((m, k), (n, k), dtype, transpose_b=True)
    stage = blocked(graph)
    assert stage.b.strides[-2:] == (1, k)  # what `gemm.transposes` packs
    assert_numpy_product_on_1_and_2_threads(jit, graph, inputs, dtype, transpose_b=True)


@pytest.mark.parametrize("dtype", [f32, bf16, f16], ids=str)
@pytest.mark.parametrize("m,k,n", [(32, 576, 96), (7, 17, 1000), (131, 257, 97), (5, 33, 4100)])
def test_b_contiguous_along_its_columns_packs_by_vectors_along_its_rows(jit, dtype, m, k, n):
    """B stored [k, n] (a Conv1D weight, or a gradient): full slivers copy each depth step's columns
    as vectors, the edge sliver element by element; the product as numpy's, the same bits on 1
    and 2 threads."""
    graph, inputs = matmul_graph((m, k), (k, n), dtype)
    stage = blocked(graph)
    assert stage.b.strides[-1] == 1  # what `_Emitter._pack_sweep` packs
    assert_numpy_product_on_1_and_2_threads(jit, graph, inputs, dtype)


@pytest.mark.parametrize("dtype", [bf16, f16], ids=str)
@pytest.mark.parametrize("m,k,n", [(33, 1000, 17), (100, 300, 70)])
def test_gemm_of_16_bit_operands_sums_in_f32(jit, dtype, m, k, n):
    """16-bit inputs widen to f32, every sum is f32, and the result rounds once to the 16-bit output."""
    graph, inputs = matmul_graph((m, k), (k, n), dtype)
    blocked(graph)
    got = run_kernels(graph, inputs, jit=jit)[0]["c"]
    exact = inputs["a"].astype(np.float64) @ inputs["b"].astype(np.float64)
    assert got.dtype == dtype.np
    spacing = np.spacing(np.abs(exact).astype(dtype.np)).astype(np.float64)  # one unit of the output's precision
    assert np.all(np.abs(got.astype(np.float64) - exact) <= spacing + 1e-4 * math.sqrt(k))


def fused(graph):
    return PassManager.parse("decompose,fuse").run(graph)


@pytest.mark.parametrize("m,k,n", [(130, 97, 203), (37, 1000, 41)])
def test_fused_bias_gelu_residual_epilogue(jit, m, k, n):
    """The epilogue applies once, on the last depth block (k = 1000 spans several)."""
    b = Builder()
    x, w = b.input("x", TensorType((m, k), f32)), b.input("w", TensorType((k, n), f32))
    bias, res = b.input("bias", TensorType((n,), f32)), b.input("res", TensorType((m, n), f32))
    b.output("y", b.add(b.gelu(b.add(b.matmul(x, w), bias), approximate="none"), res))
    inputs = {v.name: RNG.standard_normal(v.type.shape).astype(np.float32) for v in b.graph.inputs}
    want = interpret(b.graph, inputs).outputs["y"]
    graph = fused(b.graph)
    assert [s.kind for p in lower_graph(graph) for s in p.stages] == ["gemm"]
    np.testing.assert_allclose(run_kernels(graph, inputs, jit=jit)[0]["y"], want, rtol=1e-4, atol=1e-4)


def test_conv2d_and_its_gradients(jit):
    b = Builder()
    x, w = b.input("x", TensorType((3, 6, 19, 17), f32)), b.input("w", TensorType((10, 3, 3, 3), f32))
    conv = {"stride": (1, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 2}
    y = b.conv2d(x, w, **conv)
    g = b.input("g", y.type)
    b.output("y", y)
    b.output("dx", b.conv2d_input_grad(g, w, input_hw=(19, 17), **conv))
    b.output("dw", b.conv2d_weight_grad(x, g, kernel_hw=(3, 3), **conv))
    inputs = {v.name: RNG.standard_normal(v.type.shape).astype(np.float32) for v in b.graph.inputs}
    want = interpret(b.graph, inputs).outputs
    got = run_kernels(b.graph, inputs, jit=jit)[0]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_a_sliver_of_zero_rows_skips_its_products(jit):
    """Rows 0-167 of A are zero (whole slivers of every tile's 6, 8, 12 or 14 rows): their sums are
    exactly zero even opposite an infinity in B, as in reference BLAS; the rest as numpy's."""
    graph, inputs = matmul_graph((200, 300), (300, 50))
    blocked(graph)
    inputs["a"][:168] = 0.0
    inputs["a"][:168:2, 7] = -0.0
    inputs["b"][3, 5] = np.inf
    got = [run_kernels(graph, inputs, jit=jit, parallel=Parallel(t))[0]["c"] for t in (1, 2)]
    assert np.all(got[0][:168] == 0.0) and not np.signbit(got[0][:168]).any()
    with np.errstate(invalid="ignore"):
        exact = inputs["a"][168:].astype(np.float64) @ inputs["b"].astype(np.float64)
    np.testing.assert_allclose(got[0][168:], exact, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got[1], got[0])


def test_a_weight_gradient_with_no_token_counted_is_zero(jit):
    """Every depth step dead (a batch the loss counts nothing of): no step is packed, and C is
    exactly zero, on every depth block of the small-block tiles too."""
    graph, inputs = matmul_graph((300, 70), (300, 90), transpose_a=True)
    blocked(graph)
    inputs["a"][:] = 0.0
    got = run_kernels(graph, inputs, jit=jit)[0]["c"]
    assert np.all(got == 0.0) and not np.signbit(got).any()


@pytest.mark.parametrize("triangle", ["lower", "upper"])
def test_a_slivers_depth_runs_from_its_first_nonzero_to_its_last(jit, triangle):
    """A causal attention's probabilities (lower: zeros after each row's last depth step) or their
    transpose (upper: zeros before): the zeros outside a sliver's span are never multiplied, so
    the infinity in B's last (first) depth row reaches only the sliver whose span holds it; every
    other row as numpy's, the same bits on 1 and 2 threads."""
    graph, inputs = matmul_graph((200, 200), (200, 30))
    blocked(graph)
    inputs["a"] = (np.tril if triangle == "lower" else np.triu)(inputs["a"])
    edge = 199 if triangle == "lower" else 0
    finite_b = inputs["b"].astype(np.float64)
    inputs["b"][edge, 0] = np.inf
    got = [run_kernels(graph, inputs, jit=jit, parallel=Parallel(t))[0]["c"] for t in (1, 2)]
    rows = slice(0, 192) if triangle == "lower" else slice(14, 200)  # outside the edge's sliver on every tile
    exact = inputs["a"].astype(np.float64) @ finite_b
    np.testing.assert_allclose(got[0][rows], exact[rows], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[1], got[0])


@pytest.mark.parametrize("dtype", [f32, bf16], ids=str)
@pytest.mark.parametrize("zero_in", ["a", "b"])
def test_a_weight_gradient_packs_only_the_tokens_with_a_gradient(jit, zero_in, dtype):
    """dW = X^T dY (or dY^T X) over 1000 tokens, a quarter of whose gradient rows are zero (a masked
    loss): the sum over the others, never multiplying the infinity in a masked token's X, the same
    bits on 1 and 2 threads (bf16: its output takes the whole depth in one block)."""
    tokens, masked = 1000, np.arange(1000) % 4 == 1
    dy = RNG.standard_normal((tokens, 70)).astype(dtype.np)
    dy[masked] = 0.0
    x = RNG.standard_normal((tokens, 90)).astype(dtype.np)
    x[np.flatnonzero(masked)[::7], 3] = np.inf
    a, b_ = (dy, x) if zero_in == "a" else (x, dy)
    graph, inputs = matmul_graph(a.shape, b_.shape, dtype, transpose_a=True)
    stage = blocked(graph)
    assert stage.a.strides[-2] == 1 and stage.b.strides[-1] == 1  # what `gemm.skips_zero_depth` selects
    inputs.update(a=a, b=b_)
    got = [run_kernels(graph, inputs, jit=jit, parallel=Parallel(t))[0]["c"] for t in (1, 2)]
    live = ~masked
    exact = a[live].T.astype(np.float64) @ b_[live].astype(np.float64)
    rounding = np.spacing(np.abs(exact).astype(dtype.np)).astype(np.float64) if dtype != f32 else 0
    assert np.all(np.abs(got[0].astype(np.float64) - exact) <= rounding + 1e-4 * (1 + np.abs(exact)))
    np.testing.assert_array_equal(got[1], got[0])


def test_thread_counts_do_not_change_a_bit(jit):
    """Each sum's depth order is the tile's, never the thread count's."""
    b = Builder()
    x, w = b.input("x", TensorType((257, 1000), f32)), b.input("w", TensorType((1000, 203), f32))
    b.output("h", b.tanh(b.matmul(x, w)))
    b.output("g", b.matmul(w, b.input("v", TensorType((203, 29), f32))))  # split by columns
    graph = fused(b.graph)
    inputs = {v.name: RNG.standard_normal(v.type.shape).astype(np.float32) for v in b.graph.inputs}
    runs = [run_kernels(graph, inputs, jit=jit, parallel=Parallel(t))[0] for t in (1, 2, 3)]
    np.testing.assert_allclose(runs[0]["h"], interpret(b.graph, inputs).outputs["h"], rtol=1e-4, atol=1e-4)
    for other in runs[1:]:
        for name in runs[0]:
            np.testing.assert_array_equal(other[name], runs[0][name], err_msg=name)


def inner_loop(asm: str) -> list[str]:
    """The lines of the innermost loop (label to backward branch, with no loop inside) with the most FMAs."""
    lines = asm.splitlines()
    labels = {line[:-1]: i for i, line in enumerate(lines) if re.fullmatch(r"\.LBB\d+_\d+:", line)}
    loops = []
    for i, line in enumerate(lines):
        jump = re.fullmatch(r"\s+j\w+\s+(\.LBB\d+_\d+)", line)
        if jump and labels.get(jump.group(1), i) < i:
            loops.append((labels[jump.group(1)], i))
    innermost = [(s, e) for s, e in loops if not any((s, e) != o and s <= o[0] and o[1] <= e for o in loops)]
    return max((lines[s:e + 1] for s, e in innermost), key=lambda body: sum("vfmadd" in x for x in body))


@pytest.mark.parametrize("name,cpu,register,columns", [
    ("avx2", "haswell", "ymm", 512), ("avx2", "znver3", "ymm", 512), ("avx512", "znver5", "zmm", 512),
    ("avx512", "skylake-avx512", "zmm", 512), ("avx512", "znver5", "zmm", 64)])
def test_micro_kernel_assembly_keeps_its_tile_in_registers(name, cpu, register, columns):
    """For the CPU the tile is shaped for (and the narrow variant a 64-column product takes): the
    FMAs of the unrolled depth steps in one loop, on full-width registers, and no stack traffic
    (spills and reloads) in it."""
    tile = TILES[name] if columns == 512 else TILES[name].narrow()
    n = 512
    buffers = (Buffer("a", "input", (n, n), "f32"), Buffer("b", "input", (n, columns), "f32"),
               Buffer("c", "output", (n, columns), "f32"))
    stage = GemmStage("c", (), n, columns, n, Access("a", 0, (n, 1)), Access("b", 0, (columns, 1)))
    module, _ = lower_program(KernelProgram("gemm", "matmul", None, "", buffers, (stage,)), "asm", tile=TILES[name])
    loop = inner_loop(engine.assembly(module.ir_text(), cpu=cpu))
    fmas = [x for x in loop if "vfmadd" in x]
    assert len(fmas) == UNROLL * tile.mr * tile.nr // tile.lanes
    assert sum("vbroadcastss" in x for x in loop) == UNROLL * tile.mr  # one per row of A and depth step
    assert all(re.search(rf"%{register}\d+\s*$", x) for x in fmas)
    assert not [x for x in loop if "(%rsp)" in x]
