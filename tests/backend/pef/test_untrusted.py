"""A PEF is untrusted input: crafted files (edited, then signed again) are refused before anything runs."""
from __future__ import annotations

import re

import pytest
from crafted import allocation, arena, buffer, craft, stage

from backend.pef.file import load_pef
from backend.pef.program import KernelProgram
from backend.pef.records import Access, Body, Buffer, Node, ProgramError
from backend.pef.stages import GatherStage, LiteralStage, MapStage, PadStage, ReduceStage, Stage
from backend.pef.validate import validate
from ir.errors import PEFError


def _gather_from_an_empty_table(obj):
    _, gather = stage(obj, "gather")
    gather["table_shape"][0] = 0
    gather["table"]["offset"] = 2**40


def _scatter_add_at_the_arena_end(obj):
    program, scatter = stage(obj, "scatter_add")
    end = arena(obj, "onchip")["size"]
    program["buffers"].append({"name": "tz", "role": "temp", "shape": [0, 16], "dtype": "f32",
                               "tier": "onchip", "offset": end, "strides": [16, 1]})
    obj["memory"]["allocations"].append({"tensor": f"{program['name']}/tz", "arena": "onchip",
                                         "offset": end, "nbytes": 0})
    extra = dict(scatter, out="tz", updates=dict(scatter["updates"], strides=[512, 32, 1]))
    program["stages"].insert(0, extra)
    if program["schedule"]["tiles"]:
        program["schedule"]["tiles"].insert(0, [1, 16])


def _update_in_a_larger_range(obj):
    """The first param's update moved to the end of its arena, with twice the param's bytes."""
    update = obj["symbols"]["updates"][0]
    param = next(p for p in obj["symbols"]["params"] if p["name"] == update["param"])
    place = allocation(obj, param["tensor"])
    ddr = arena(obj, place["arena"])
    moved = allocation(obj, update["tensor"])
    nbytes = -(-2 * place["nbytes"] // 64) * 64
    moved.update(offset=ddr["size"], nbytes=nbytes)
    ddr["size"] += nbytes
    for program in obj["kernels"]:
        for b in program["buffers"]:
            if b["name"] == update["tensor"]:
                b["offset"] = moved["offset"]


def _huge_gemm(obj):
    _, gemm = stage(obj, "gemm")
    gemm["k"] = 2**40
    gemm["a"]["strides"][-1] = 0
    gemm["b"]["strides"][-2] = 0


def _huge_reduce(obj):
    owner, i, reduce = next((k, i, s) for k in obj["kernels"] for i, s in enumerate(k["stages"])
                             if s["kind"] == "reduce" and len(s["axes"]) == len(s["shape"]) and s["shape"][0] >= 8)
    reduce["shape"], reduce["axes"] = [2**61, 8], [0, 1]  # still a sum of every element
    owner["schedule"]["tiles"][i] = []
    for read in reduce["body"]["reads"]:
        read["strides"] = [0, 1]


def _scatter_add_in_place_without_a_base(obj):
    _, scatter = stage(obj, "scatter_add")  # the tied embedding's gradient, into the head's
    scatter["base"] = None


def _scatter_add_in_place_over_another_layout(obj):
    _, scatter = stage(obj, "scatter_add")
    scatter["base"]["strides"] = scatter["base"]["strides"][::-1]


def _huge_arena(obj):
    arena(obj, "ddr")["size"] = 2**36


def _wide_constant(obj):
    node = next(n for k in obj["kernels"] for s in k["stages"] for n in (s.get("body") or {}).get("nodes", ())
                if n["op"] == "const" and n["dtype"] == "i32")  # the token type compared, say
    node["value"] = 2**61


@pytest.mark.parametrize("edit, message", [
    (_gather_from_an_empty_table, r"gather.*table.*empty"),
    (_scatter_add_at_the_arena_end, r"scatter_add.*empty"),
    (_scatter_add_in_place_without_a_base, r"scatter_add.*in_place: there is no base to add into in place"),
    (_scatter_add_in_place_over_another_layout,
     r"in_place: base '%\d+' does not share output '%\d+'s memory and layout"),
    (_update_in_a_larger_range, r"update tensor '%\d+' has a range of 64 bytes, its param '@optimizer.step' one "
                                r"of 4 bytes; they trade places after each step, so they must be the same size"),
    (_huge_gemm, r"one run of the program \(its kernel 'k2_matmul_add': \d+\) needs \d+ element operations, "
                 r"more than the limit of 274877906944 \(raise it with RDUFLOW_MAX_WORK\)"),
    (_huge_reduce, r"its kernel 'k\d+_\w+': \d{20,}\) needs \d{20,} element operations.*RDUFLOW_MAX_WORK"),
    (_huge_arena, r"memory: the program \(arenas ddr 68719476736 bytes, onchip \d+ bytes\) needs \d+ bytes, more "
                  r"than the limit of 17179869184 \(raise it with RDUFLOW_MAX_ARENA_BYTES\)"),
    (_wide_constant, r"2305843009213693952 does not fit i32"),
], ids=["gather-empty-table", "scatter-add-empty-out", "scatter-add-no-base", "scatter-add-base-layout",
        "update-range", "gemm-k-2**40", "reduce-2**61",
        "arena-2**36", "i32-const-2**61"])
def test_a_crafted_pef_is_refused_before_it_runs(edit, message):
    with pytest.raises(PEFError, match=message):
        load_pef(craft(edit), "crafted.pef")


def test_a_user_may_raise_the_limits(monkeypatch):
    crafted = craft(_huge_arena)
    monkeypatch.setenv("RDUFLOW_MAX_ARENA_BYTES", str(2**37))
    assert dict((a.name, a.size) for a in load_pef(crafted).memory.arenas)["ddr"] == 2**36
    monkeypatch.setenv("RDUFLOW_MAX_ARENA_BYTES", "lots")
    with pytest.raises(PEFError, match="RDUFLOW_MAX_ARENA_BYTES must be a positive integer, got 'lots'"):
        load_pef(crafted)


def _int_program(stage: Stage, out_shape: tuple[int, ...]) -> KernelProgram:
    buffers = (Buffer("x", "input", (4,), "i32"), Buffer("y", "output", out_shape, "i32"))
    return KernelProgram("k0", "op", None, "", buffers, (stage,))


_READ_X = Body((Access("x", 0, (1,)),), (), (Node("arg", "i32", (), 0),))


@pytest.mark.parametrize("stage, shape, message", [
    (ReduceStage("y", (4,), (0,), "add", float("nan"), _READ_X), (), "identity: constant nan does not fit i32"),
    (ReduceStage("y", (4,), (0,), "add", 2.0**40, _READ_X), (), "constant 1099511627776.0 does not fit i32"),
    (PadStage("y", Access("x", 0, (1,)), (4,), (1,), (0,), (0,), 1e30), (5,), "value: constant 1e+30"),
    (LiteralStage("y", (1, 2, 3, -2**31 - 1)), (4,), "constant -2147483649 does not fit i32"),
    (MapStage("y", Body((), (), (Node("const", "i32", (), 2**31),))), (4,), "2147483648 does not fit"),
])
def test_integer_constants_must_fit_their_dtype(stage, shape, message):
    with pytest.raises(ProgramError, match=re.escape(message)):
        validate(_int_program(stage, shape))


def test_integer_constants_at_their_limits_are_fine():
    validate(_int_program(LiteralStage("y", (-2**31, 0, 1, 2**31 - 1)), (4,)))
    validate(_int_program(ReduceStage("y", (4,), (0,), "max", float("-inf"), _READ_X), ()))


_READ_BLOCKS = Access("t", 0, (32, 1))


@pytest.mark.parametrize("buffers, stage, message", [
    # a gather across the blocked last axis would split blocks
    (((4, 64), "q8_0", (4, 32), "q8_0"),
     GatherStage("o", Access("t", 0, (64, 1)), (4, 64), Access("i", 0, (1,)), (32,), 1),
     "a q8_0 table is gathered in whole blocks"),
    # blocks are written only by copying them whole
    (((2, 32), "q8_0", (2, 32), "q8_0"), MapStage("o", Body((_READ_BLOCKS,), (), (Node("arg", "q8_0", (), 0),))),
     "a map stage cannot write q8_0 blocks"),
    # and read only through a cast to a float type
    (((2, 32), "q8_0", (2, 32), "f32"),
     MapStage("o", Body((_READ_BLOCKS,), (), (Node("arg", "q8_0", (), 0), Node("add", "q8_0", (0, 0)),
                                              Node("cast", "f32", (1,))))),
     "blocks are only read, and only cast to a float type"),
    # a blocked buffer's rows are whole blocks
    (((2, 7), "q4_1", (2, 7), "f32"),
     MapStage("o", Body((Access("t", 0, (7, 1)),), (), (Node("arg", "q4_1", (), 0), Node("cast", "f32", (0,))))),
     "a q4_1 buffer's last axis holds whole blocks of 32"),
])
def test_blocks_are_read_and_copied_whole(buffers, stage, message):
    """A crafted program that would have the JIT split, compute on or store into blocks is refused
    when it is read, not when the JIT meets it."""
    table_shape, table_dtype, out_shape, out_dtype = buffers
    program = KernelProgram("k0", "op", None, "", (Buffer("t", "input", table_shape, table_dtype),
                                                   Buffer("i", "input", (32,), "i32"),
                                                   Buffer("o", "output", out_shape, out_dtype)), (stage,))
    with pytest.raises(ProgramError, match=re.escape(message)):
        validate(program)
