"""The PEF format: deterministic bytes, a validating reader, atomic writes, fuzzing."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
from backend_graphs import decompose, fuse_phases, mlp
from fuzz_pef import ZOO, check_case, raw_mutation, run, run_executed, sample_pef, structural_mutation
from planned_backend import build_pef, compile_program

from backend.driver import BackendOptions, compile_options
from backend.pef.file import FORMAT_VERSION, MAGIC, load_pef, read_pef, write_pef
from backend.pef.targets import load_target
from ir.errors import PEFError

ROOT = Path(__file__).resolve().parents[2]


def _options(**kw) -> BackendOptions:
    return BackendOptions(load_target("rdu-mini"), options=compile_options({"batch_size": 4, "pef_name": "m"}), **kw)


def _envelope(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False)


def _resign(outer: dict, obj=None) -> bytes:
    if obj is not None:
        outer["payload"] = msgpack.packb(obj, use_bin_type=True)
    outer["sha256"] = hashlib.sha256(outer["payload"]).hexdigest()
    return msgpack.packb(outer, use_bin_type=True)


def test_two_compiles_are_byte_identical():
    first = compile_program(decompose(mlp()), _options())
    second = compile_program(decompose(mlp()), _options())
    assert first == second
    assert compile_program(fuse_phases(decompose(mlp())), _options()) == \
        compile_program(fuse_phases(decompose(mlp())), _options())


def test_bytes_do_not_depend_on_the_process():
    """Another interpreter with another string-hash seed writes the same bytes."""
    script = ("import sys, hashlib; sys.path[:0] = ['tests/backend', 'tests']; from test_pef import _options; "
              "from backend_graphs import decompose, mlp; from planned_backend import compile_program; "
              "print(hashlib.sha256(compile_program(decompose(mlp()), _options())).hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == hashlib.sha256(compile_program(decompose(mlp()), _options())).hexdigest()


def test_round_trip_and_contents():
    pef = build_pef(decompose(mlp()), _options())
    loaded = load_pef(pef.to_bytes())
    assert loaded == pef
    header = loaded.header
    assert (header.mode, header.target.name, header.n_chips, header.num_tiles) == ("train", "rdu-mini", 1, 4)
    assert [(o.name, o.value, o.recompile) for o in header.options] == [("batch_size", 4, True),
                                                                         ("pef_name", "m", False)]
    symbols = loaded.symbols
    assert [s.name for s in symbols.inputs] == ["x", "labels"]
    assert [(p.name, p.role, p.init) for p in symbols.params] == [("w1", "param", "xavier_uniform"),
                                                                  ("b1", "param", "normal"), ("w2", "param", "xavier_uniform")]
    assert symbols.params[1].init_args == {"std": 0.1}
    assert [u.param for u in symbols.updates] == ["b1"]
    assert [o.name for o in symbols.outputs] == ["loss", "logits"]


def test_write_is_atomic_and_named(tmp_path):
    data = compile_program(decompose(mlp()), _options())
    path = write_pef(data, tmp_path / "out", "mlp")
    assert path == tmp_path / "out" / "mlp" / "mlp.pef"
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["mlp.pef"]
    write_pef(data, tmp_path / "out", "mlp")
    assert read_pef(path) == load_pef(data)
    with pytest.raises(PEFError, match="bad PEF name"):
        write_pef(data, tmp_path, "a/b")


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-10], "not a PEF file"),
    (lambda d: b"PK\x03\x04" + d, "not a PEF file"),
    (lambda d: d[:200] + bytes([d[200] ^ 1]) + d[201:], "modified or corrupted"),
    (lambda d: d.replace(MAGIC.encode(), b"other-form!"), "not a PEF file"),
])
def test_damaged_files_are_refused(tmp_path, damage, message):
    path = tmp_path / "bad.pef"
    path.write_bytes(damage(compile_program(decompose(mlp()), _options())))
    with pytest.raises(PEFError, match=f"{path}.*{message}"):
        read_pef(path)


def test_versions_are_checked():
    outer = _envelope(compile_program(decompose(mlp()), _options()))
    outer["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(PEFError, match=f"version {FORMAT_VERSION + 1} is newer than this rduflow reads"):
        load_pef(_resign(outer))
    outer["format_version"] = 0
    with pytest.raises(PEFError, match="no longer supported"):
        load_pef(_resign(outer))


def test_missing_file():
    with pytest.raises(PEFError, match="cannot read PEF file /nonexistent/x.pef"):
        read_pef("/nonexistent/x.pef")


def _tampered(edit) -> bytes:
    outer = _envelope(compile_program(decompose(mlp()), _options()))
    obj = msgpack.unpackb(outer["payload"], raw=False)
    edit(obj)
    return _resign(outer, obj)


@pytest.mark.parametrize("edit, message", [
    (lambda o: o["kernels"][0]["stages"][0]["a"].update(offset=10**6), r"stages\[0\].a: reads past the end"),
    (lambda o: o["kernels"][0]["buffers"][0].update(offset=64), "not where the memory plan puts it"),
    (lambda o: o["kernels"][0]["stages"][0].update(kind="launch"), "unknown kind 'launch'"),
    (lambda o: o["sections"][0].update(pcus=10**6), "do not match its kernels or do not fit"),
    (lambda o: o["memory"]["allocations"][1].update(offset=0), "overlap"),
    (lambda o: o["symbols"]["params"][0].update(init="launch_missiles"), "unknown initializer"),
    (lambda o: o["header"]["target"]["pcu"].update(lanes="32"), r"header.target.pcu.lanes: Input should be"),
    (lambda o: o["kernels"].insert(0, o["kernels"].pop(1)), "is not an earlier tensor"),
])
def test_the_validator_names_the_problem(edit, message):
    with pytest.raises(PEFError, match=message):
        load_pef(_tampered(edit), "model.pef")


def test_fuzz_contract_holds_for_a_few_hundred_cases():
    outcomes = run(300, seed=1)
    assert sum(outcomes.values()) == 300
    assert outcomes[("raw", "refused")] == 150  # the checksum catches every raw change
    assert outcomes[("structural", "refused")] > 100


def test_a_single_mutation_each_way():
    original = sample_pef()
    data = original.to_bytes()
    rng = np.random.default_rng(7)
    assert check_case(original, data, raw_mutation(data, rng), structural=False) == "refused"
    assert check_case(original, data, structural_mutation(data, rng), structural=True) in ("refused", "valid",
                                                                                           "identical")


def test_executed_mutants_of_every_zoo_program_break_no_contract():
    """A few hundred mutants, each read and (if accepted) run under the checked JIT in a worker process."""
    result = run_executed(200, seed=3)
    assert result["violations"] == []
    outcomes = result["outcomes"]
    assert sum(outcomes.values()) == 200
    assert {name for name, _ in outcomes} == {variant.label for variant in ZOO}
    assert {"gpt2-q8_0-inference", "mlp-data-parallel-train"} <= {name for (name, o) in outcomes if o == "ran"}
    assert sum(n for (_, outcome), n in outcomes.items() if outcome == "ran") > 20  # mutants that do run
    assert len(result["fields"]) > 100
