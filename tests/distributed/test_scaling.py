"""The cost model of data parallelism: links in the target, ring all-reduce time, modeled scaling."""
from __future__ import annotations

import math

import pytest

from backend.pef.targets import Link, Links, load_target
from compiler.driver import CompileOptions, compile_model
from compiler.training import TrainingOptions
from ir.errors import ConfigError
from runtime.cost_model import all_reduce_seconds, estimate, ring_seconds, scaling
from tools.cli import main

SN40L = load_target("sn40l")
MB = 1 << 20


def test_ring_all_reduce_takes_2n_minus_2_steps_of_an_nth():
    assert ring_seconds(8 * MB, 1, 1e9, 1e-6) == 0.0
    assert ring_seconds(8 * MB, 4, 1e9, 1e-6) == pytest.approx(6 * (1e-6 + 2 * MB / 1e9))


def test_the_sn40l_links_and_the_defaults_of_a_target_without_them():
    assert SN40L.links == Links(rdu=Link(bandwidth=64e9, latency=2e-6), node=Link(bandwidth=50e9, latency=5e-6),
                                host=Link(bandwidth=32e9, latency=2e-6))
    assert load_target("rdu-mini").links == Links()


def test_a_bad_link_in_a_target_file_is_named(tmp_path):
    text = (load_target.__globals__["PRESETS_DIR"] / "rdu-mini.yaml").read_text()
    path = tmp_path / "t.yaml"
    path.write_text(text + "links:\n  rdu: {bandwidth: -1, latency: 0}\n")
    with pytest.raises(ConfigError, match="bad target field links.rdu.bandwidth"):
        load_target(path)


def test_reduce_on_rdu_rings_over_the_chip_links_then_the_node_ports():
    nbytes = 64 * MB
    inside = all_reduce_seconds(nbytes, 8, SN40L, on_rdu=True)
    assert inside == pytest.approx(ring_seconds(nbytes, 8, 64e9, 2e-6))
    across = all_reduce_seconds(nbytes, 64, SN40L, on_rdu=True)  # 4 nodes of 16: the node ports bound the ring
    assert across == pytest.approx(ring_seconds(nbytes, 64, 50e9, 5e-6))


def test_host_reduction_crosses_the_host_link_twice_and_rings_between_nodes():
    nbytes = 64 * MB
    host = 2 * (2e-6 + nbytes / 32e9)
    assert all_reduce_seconds(nbytes, 8, SN40L, on_rdu=False) == pytest.approx(host)
    assert all_reduce_seconds(nbytes, 64, SN40L, on_rdu=False) == pytest.approx(host + ring_seconds(nbytes, 4, 50e9, 5e-6))


@pytest.fixture(scope="module")
def dp_pef():
    options = TrainingOptions(data_parallel=True, world_size=8, reduce_on_rdu=True)
    return compile_model(CompileOptions("mlp", training=options)).pef


def test_the_all_reduce_kernels_are_bound_by_the_links(dp_pef):
    report = estimate(dp_pef)
    collectives = [k for k in report.kernels if k.op == "all_reduce"]
    assert collectives and all(k.bound == "link" for k in collectives)
    (collective,) = collectives
    nbytes = sum(4 * math.prod(p.shape) for p in dp_pef.symbols.params if p.role == "param")
    assert collective.link_s == pytest.approx(all_reduce_seconds(nbytes, 8, SN40L, True))
    assert report.allreduce_s >= sum(k.link_s for k in collectives)


def test_scaling_adds_the_all_reduce_to_the_local_step(dp_pef):
    one, eight, many = scaling(dp_pef)
    assert (one.replicas, eight.replicas, many.replicas) == (1, 8, 64)
    assert one.allreduce_s == 0.0 and 0 < eight.allreduce_s < many.allreduce_s
    assert eight.step_s - eight.allreduce_s == pytest.approx(one.step_s)
    assert eight.step_s == pytest.approx(estimate(dp_pef).time_s)  # the PEF's own 8-way step
    assert eight.speedup(one) == pytest.approx(8 * one.step_s / eight.step_s)


def test_compile_stats_show_the_modeled_scaling(tmp_path, capsys):
    assert main(["compile", "mlp", "--data-parallel", "-ws", "8", "--reduce-on-rdu", "--stats", "-o", str(tmp_path),
                 "--pef-name", "m"]) == 0
    out = capsys.readouterr().out
    assert "Data-parallel scaling on sn40l (modeled; gradients all-reduced on the RDUs (--reduce-on-rdu)" in out
    assert [line.split(":")[0].strip() for line in out.splitlines() if " RDUs: step" in line] == \
        ["1 RDUs", "8 RDUs", "64 RDUs"]
    assert main(["compile", "mlp", "--reduce-on-rdu"]) == 1
    assert "error: --reduce-on-rdu needs --data-parallel" in capsys.readouterr().err


def test_the_trace_shows_the_all_reduce_section_on_the_modeled_rdu(dp_pef):
    from runtime.profile import Profile, trace_events

    profile = Profile(dp_pef)
    profile.add_step([0.0] * len(dp_pef.kernels))
    report = estimate(dp_pef)
    sections = [e for e in trace_events(profile, report) if e["pid"] == 2 and e.get("cat") == "allreduce"]
    (collective,) = [k for k in report.kernels if k.op == "all_reduce"]
    assert len(sections) == 1 and sections[0]["dur"] >= collective.link_s * 1e6 > 0
    assert sections[0]["args"]["bound"] == "link"
