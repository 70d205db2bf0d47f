"""PEF format 2: named entry points sharing the main program's params, validated on load."""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from backend.pef.file import FORMAT_VERSION, MAGIC, load_pef
from compiler.driver import CompileOptions, compile_model
from ir.errors import PEFError

_FUZZ = Path(__file__).parents[1] / "backend" / "fuzz_pef.py"
_spec = importlib.util.spec_from_file_location("fuzz_pef_for_entries", _FUZZ)
fuzz = sys.modules.setdefault("fuzz_pef_for_entries", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fuzz)

SMALL = ("model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.seq_len=4", "model.max_seq_length=8")


def compile_small():
    return compile_model(CompileOptions(model="gpt2", overrides=SMALL, inference=True, batch_size=2)).pef


@pytest.fixture(scope="module")
def pef():
    return compile_small()


def sign(obj: dict, version: int = FORMAT_VERSION) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return msgpack.packb({"magic": MAGIC, "format_version": version,
                          "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, use_bin_type=True)


def payload(pef) -> dict:
    return msgpack.unpackb(msgpack.unpackb(pef.to_bytes(), raw=False)["payload"], raw=False)


def test_entries_round_trip_and_share_params(pef):
    assert pef.entry_names == ("prefill", "decode")
    assert load_pef(pef.to_bytes()) == pef
    prefill, decode = pef.entry("prefill"), pef.entry("decode")
    assert [(s.name, s.shape) for s in prefill.symbols.inputs] == [("input_ids", (2, 4)), ("positions", (2,)),
                                                                   ("lengths", (2,))]
    assert [(s.name, s.shape) for s in decode.symbols.inputs] == [("input_ids", (2, 1)), ("positions", (2,))]
    assert [(s.name, s.shape) for s in pef.symbols.inputs] == [("input_ids", (2, 4))]  # the forward pass
    assert prefill.symbols.params == decode.symbols.params == pef.symbols.params
    caches = [p.name for p in pef.symbols.params if p.role == "state"]
    assert caches == ["transformer.h.0.attn.k_cache", "transformer.h.0.attn.v_cache"]
    assert {u.param for u in decode.symbols.updates} == set(caches)
    with pytest.raises(KeyError):
        pef.entry("train")


def test_compiles_are_byte_identical(pef):
    assert compile_small().to_bytes() == pef.to_bytes()


def test_format_1_files_still_load_but_hold_no_entries(pef):
    plain = payload(pef)
    plain["entries"] = []
    assert load_pef(sign(plain, version=1)).entry_names == ()
    with pytest.raises(PEFError, match="entries: format version 1 has no entry points"):
        load_pef(sign(payload(pef), version=1), "old.pef")


def _param(obj, name):
    return next(p for p in obj["symbols"]["params"] if p["name"] == name)


def _allocation(memory, tensor):
    return next(a for a in memory["allocations"] if a["tensor"] == tensor)


def _swap_caches(obj):
    """The decode entry's two caches (with their in-place updates) trade places, consistently."""
    entry = obj["entries"][1]
    updates = {u["param"]: u["tensor"] for u in entry["symbols"]["updates"]}
    k, v = (f"transformer.h.0.attn.{n}_cache" for n in "kv")
    moved = {}
    for a, b in ((f"@{k}", f"@{v}"), (updates[k], updates[v])):
        first, second = _allocation(entry["memory"], a), _allocation(entry["memory"], b)
        moved[a], moved[b] = second["offset"], first["offset"]
    for allocation in entry["memory"]["allocations"]:
        allocation["offset"] = moved.get(allocation["tensor"], allocation["offset"])
    for kernel in entry["kernels"]:
        for buffer in kernel["buffers"]:
            buffer["offset"] = moved.get(buffer["name"], buffer["offset"])


def _overlap_param(obj):
    """An entry tensor placed over the main program's embedding table."""
    entry = obj["entries"][0]
    wte = _allocation(obj["memory"], "@transformer.wte.weight")
    victim = next(a for a in entry["memory"]["allocations"] if a["tensor"] == "%positions")
    victim["arena"], victim["offset"] = wte["arena"], wte["offset"]


@pytest.mark.parametrize("edit, message", [
    (lambda o: _param(o["entries"][0], "transformer.wte.weight")["init_args"].update(std=0.5),
     "entries\\[0\\] 'prefill': param 'transformer.wte.weight' is not the main program's, at the same place"),
    (_swap_caches, "entries\\[1\\] 'decode': param 'transformer.h.0.attn.k_cache' is not the main program's"),
    (_overlap_param, "entries\\[0\\] 'prefill': (tensor '%positions' overlaps param tensor "
                     "'@transformer.wte.weight'|memory: tensors .* overlap)"),
    (lambda o: o["entries"][1].update(name="prefill"), "entries\\[1\\].name: entry 'prefill' appears twice"),
    (lambda o: o["entries"][0].update(name="pre fill"), "'pre fill' is not an identifier"),
    (lambda o: o["entries"][1]["kernels"].reverse(), "entries\\[1\\] 'decode': "),
])
def test_the_validator_names_the_entry_and_the_problem(pef, edit, message):
    obj = payload(pef)
    edit(obj)
    with pytest.raises(PEFError, match=message):
        load_pef(sign(obj), "gen.pef")


def test_fuzzing_a_pef_with_entries_keeps_the_contract(pef):
    data = pef.to_bytes()
    rng = np.random.default_rng(11)
    outcomes = collections.Counter()
    for i in range(60):
        structural = i % 2 == 1
        mutated = fuzz.structural_mutation(data, rng) if structural else fuzz.raw_mutation(data, rng)
        outcomes[fuzz.check_case(pef, data, mutated, structural)] += 1
    assert outcomes["refused"] > 40 and sum(outcomes.values()) == 60
