"""`rduflow compile` (backend flags), `rduflow pef info|dump` and `rduflow targets`."""
from __future__ import annotations

import json

import pytest

from backend.pef.file import read_pef
from tools.cli import main


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("pefs")
    assert main(["compile", "mlp", "-o", str(out), "--pef-name", "m", "--target", "rdu-mini"]) == 0
    return out / "m" / "m.pef"


def test_compile_writes_the_named_pef_and_stats(tmp_path, capsys):
    assert main(["compile", "mlp", "-O0", "-o", str(tmp_path), "--target", "rdu-mini", "--stats"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "mlp" / "mlp.pef"
    assert f"PEF file {path} created" in out
    pef = read_pef(path)
    assert len(pef.sections) == len(pef.kernels)
    assert f"kernels: {len(pef.kernels)} in {len(pef.kernels)} sections" in out
    assert "target rdu-mini: 1 chip(s) x 4 tile(s) = 64 PCUs and 64 PMUs available" in out
    assert "modeled off-chip traffic:" in out
    options = {o.name: (o.value, o.recompile) for o in pef.header.options}
    assert options["target"] == ("rdu-mini", True) and options["pack_sections"] == (False, True)
    assert options["batch_size"][1] is True
    assert options["training.optimizer"] == ("adamw", True)
    assert {s.phase for s in pef.sections} == {"fwd", "bwd", "gradnorm", "opt"}


def test_compile_options_reach_the_header(compiled):
    pef = read_pef(compiled)
    assert (pef.header.target.name, pef.header.n_chips, pef.header.num_tiles) == ("rdu-mini", 1, 4)
    assert len(pef.header.source_sha256) == 64
    assert len(pef.sections) < len(pef.kernels)


def test_pef_info(compiled, capsys):
    assert main(["pef", "info", str(compiled)]) == 0
    text = capsys.readouterr().out
    assert "target   rdu-mini" in text and "sections" in text and "off-chip traffic" in text
    assert main(["pef", "info", str(compiled), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    pef = read_pef(compiled)
    assert data["target"]["pcus"] == 64
    assert [s["kernels"] for s in data["sections"]] == [len(s.kernels) for s in pef.sections]
    assert data["offchip_traffic"]["total"] == sum(sum(s.offchip_read.values()) + sum(s.offchip_written.values())
                                                   for s in pef.sections)
    assert data["sizes"]["file"] == compiled.stat().st_size


def test_pef_dump(compiled, capsys):
    assert main(["pef", "dump", str(compiled), "--section", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("kernel k0_matmul") and "stage 0: gemm" in text and "memory plan" in text
    assert main(["pef", "dump", str(compiled), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["kernels"]) == len(read_pef(compiled).kernels)
    assert {a["arena"] for a in data["memory"]["allocations"]} <= {"onchip", "ddr"}


def test_pef_errors_exit_1(compiled, tmp_path, capsys):
    assert main(["pef", "dump", str(compiled), "--section", "99"]) == 1
    assert "--section 99: the PEF has sections 0 to" in capsys.readouterr().err
    broken = tmp_path / "broken.pef"
    data = bytearray(compiled.read_bytes())
    data[-5] ^= 0xFF
    broken.write_bytes(bytes(data))
    assert main(["pef", "info", str(broken)]) == 1
    assert "modified or corrupted" in capsys.readouterr().err


def test_targets(capsys):
    assert main(["targets"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("rdu-mini", "sn10", "sn30", "sn40l"))
    assert main(["targets", "sn40l", "--json"]) == 0
    (target,) = json.loads(capsys.readouterr().out)
    assert target["pcus_per_tile"] * target["tiles"] == 1040
    assert main(["targets", "sn99"]) == 1
    assert "unknown target 'sn99'" in capsys.readouterr().err


def test_bad_backend_flags(tmp_path, capsys):
    assert main(["compile", "mlp", "--target", "nope", "-o", str(tmp_path)]) == 1
    assert "unknown target 'nope'" in capsys.readouterr().err
    assert main(["compile", "mlp", "--target", "rdu-mini", "--n-chips", "5", "-o", str(tmp_path)]) == 1
    assert "--n-chips 5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", "mlp", "--num-tiles", "0"])
    assert exit_info.value.code == 2


def test_a_pipeline_without_decompose_is_refused_by_the_backend(tmp_path, capsys):
    assert main(["compile", "mlp", "--passes", "canonicalize", "-o", str(tmp_path)]) == 1
    assert "error: op 'cross_entropy' is composite: run the 'decompose' pass" in capsys.readouterr().err
