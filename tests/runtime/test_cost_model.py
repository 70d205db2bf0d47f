"""The RDU cost model: per-kernel rooflines and pipelined sections from the target's figures."""
from __future__ import annotations

import pytest
from planned_backend import build_pef

from backend.driver import BackendOptions
from backend.pef.file import Section
from backend.pef.program import KernelCost, KernelProgram, Schedule
from backend.pef.records import Access, Body, Buffer, Node
from backend.pef.stages import MapStage
from backend.pef.targets import load_target
from ir.builder import Builder
from ir.dtypes import f32
from ir.graph import Graph
from ir.types import TensorType
from runtime.cost_model import SECTION_LOAD_S, estimate, estimate_kernel, estimate_section

MINI = load_target("rdu-mini")  # 1 GHz; f32: 96 flop/cycle/PCU; PMU: 64 B/cycle; DDR: 50 GB/s


def kernel(flops: int, read: dict, written: dict, pcus: int, pmus: int, tiles=((8, 8),), shape=(64, 64)) -> KernelProgram:
    body = Body((Access("x", 0, (64, 1)),), (), (Node("arg", "f32", (), 0), Node("neg", "f32", (0,))))
    return KernelProgram(
        "k", "neg", "fwd", "", (Buffer("x", "input", shape, "f32"), Buffer("y", "output", shape, "f32")),
        (MapStage("y", body),), Schedule(tiles, pcus, pmus), KernelCost(flops, read, written))


def test_compute_bound_kernel():
    k = estimate_kernel(0, kernel(96_000_000, {"onchip": 640}, {"onchip": 640}, pcus=10, pmus=1), 0, MINI, 1, 64, 64)
    assert k.compute_s == pytest.approx(96e6 / (10 * 96 * 1e9))  # 100 us
    assert k.onchip_s == pytest.approx(1280 / (1 * 64 * 1e9))
    assert k.offchip_s == 0 and k.bound == "compute" and k.time_s == pytest.approx(1e-4)
    assert k.fill_s == pytest.approx(1e-4 / 64)  # 64 tiles of 8x8 over the 64x64 nest


def test_offchip_bound_kernel():
    k = estimate_kernel(0, kernel(1000, {"ddr": 5_000_000}, {"ddr": 5_000_000}, pcus=4, pmus=8), 0, MINI, 1, 64, 64)
    assert k.offchip_bytes == {"ddr": 10_000_000}
    assert k.offchip_s == pytest.approx(1e7 / 5e10)  # 200 us at 50 GB/s
    assert k.bound == "offchip" and k.time_s == pytest.approx(2e-4)
    two_chips = estimate_kernel(0, kernel(1000, {"ddr": 5_000_000}, {"ddr": 5_000_000}, 4, 8), 0, MINI, 2, 128, 128)
    assert two_chips.offchip_s == pytest.approx(1e-4)


def test_pcus_are_capped_by_the_budget():
    k = estimate_kernel(0, kernel(96_000, {}, {}, pcus=1000, pmus=1), 0, MINI, 1, 64, 64)
    assert k.pcus == 64 and k.compute_s == pytest.approx(96_000 / (64 * 96e9))


def test_a_section_is_as_slow_as_its_slowest_stage_plus_fill_and_load():
    fast = estimate_kernel(0, kernel(9_600_000, {}, {}, pcus=10, pmus=1), 0, MINI, 1, 64, 64)  # 10 us
    slow = estimate_kernel(1, kernel(96_000_000, {}, {}, pcus=10, pmus=1), 0, MINI, 1, 64, 64)  # 100 us
    section = Section(0, "fwd", (0, 1), 20, 2, {"ddr": 1_000_000}, {"ddr": 500_000})
    s = estimate_section(section, [fast, slow], MINI, 1)
    assert s.stage_s == pytest.approx(1e-4)
    assert s.offchip_s == pytest.approx(1.5e6 / 5e10)
    assert s.fill_s == pytest.approx((1e-5 + 1e-4) / 64)
    assert s.time_s == pytest.approx(1e-4 + (1.1e-4) / 64 + SECTION_LOAD_S)
    assert s.time_s < fast.time_s + slow.time_s  # pipelining beats running one after the other
    assert s.bound == "compute"


def matmul_pef(pack: bool, target: str = "rdu-mini"):
    b = Builder(Graph("mm"))
    x = b.input("x", TensorType((256, 512), f32))
    w = b.input("w", TensorType((512, 384), f32))
    b.output("y", b.tanh(b.matmul(x, w)))
    return build_pef(b.graph, BackendOptions(load_target(target), pack=pack, mode="inference"))


def test_program_report_totals():
    pef = matmul_pef(pack=True)
    report = estimate(pef)
    assert report.flops == sum(k.cost.flops for k in pef.kernels) > 2 * 256 * 512 * 384
    assert report.time_s == pytest.approx(sum(s.time_s for s in report.sections))
    assert 0 < report.utilization <= 1
    for k, program in zip(report.kernels, pef.kernels):
        assert k.pcus == program.schedule.pcus and k.name == program.name


def test_remodeling_on_a_bigger_target_is_faster():
    pef = matmul_pef(pack=True)
    assert estimate(pef, load_target("sn40l")).time_s < estimate(pef).time_s


def test_one_kernel_per_section_costs_more_than_packed_sections():
    packed, o0 = estimate(matmul_pef(pack=True)), estimate(matmul_pef(pack=False))
    assert len(o0.sections) > len(packed.sections) and o0.time_s > packed.time_s
