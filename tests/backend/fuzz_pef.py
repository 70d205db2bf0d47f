"""Fuzz the PEF reader: mutated files load identically or are refused with PEFError.

    python tests/backend/fuzz_pef.py [N] [SEED]      # N cases (default 10000)

Raw mutations (byte flips, truncations, inserted or deleted bytes) must be
refused or load exactly the original program. Structural mutations decode the
payload, change one field (another type, an extreme or shifted number, a
missing or unknown key, a reordered, shortened or lengthened list), re-encode
it and re-sign the checksum, so the validator — not only the hash — is
exercised: such a file is refused or loads a program that re-encodes to
itself. Any other exception is a bug.
"""
from __future__ import annotations

import collections
import hashlib
import sys
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from backend_graphs import decompose, fuse_phases, mlp  # noqa: E402

from backend.driver import BackendOptions, build_pef  # noqa: E402
from backend.pef import FORMAT_VERSION, PEF, load_pef  # noqa: E402
from backend.targets import load_target  # noqa: E402
from ir.errors import PEFError  # noqa: E402

_ODD_VALUES = [None, True, False, 0, 1, -1, 2**31, 2**63 - 1, -2**63, 0.5, -1e300, float("nan"),
               float("inf"), "", "x", "%0", "f32", "onchip", b"\x00", [], [0], [[1]], {}, {"kind": "map"}]


def sample_pef() -> PEF:
    """A small training program: fused forward kernel, an optimizer step."""
    return build_pef(fuse_phases(decompose(mlp())), BackendOptions(load_target("rdu-mini")))


def _sign(payload: bytes) -> bytes:
    outer = {"magic": "rduflow-pef", "format_version": FORMAT_VERSION,
             "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    return msgpack.packb(outer, use_bin_type=True)


def _payload(data: bytes) -> bytes:
    return msgpack.unpackb(data, raw=False)["payload"]


def raw_mutation(data: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(4)
    pos = int(rng.integers(len(data)))
    if kind == 0:
        return data[:pos] + bytes([data[pos] ^ int(rng.integers(1, 256))]) + data[pos + 1:]
    if kind == 1:
        return data[:pos]
    if kind == 2:
        return data[:pos] + bytes(rng.integers(0, 256, size=int(rng.integers(1, 9)), dtype=np.uint8)) + data[pos:]
    return data[:pos] + data[pos + int(rng.integers(1, 9)):]


def _slots(obj, out: list) -> list:
    """Every (container, key) of a decoded structure."""
    if isinstance(obj, dict):
        for key in obj:
            out.append((obj, key))
            _slots(obj[key], out)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            out.append((obj, i))
            _slots(item, out)
    return out


def _mutate_slot(container, key, rng: np.random.Generator) -> None:
    value = container[key]
    kind = rng.integers(6)
    if kind == 0 or not isinstance(value, (int, float, list, dict, str)) or isinstance(value, bool):
        container[key] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
    elif isinstance(value, (int, float)):
        container[key] = [value + 1, value - 1, -value, value * 2**20, 0][int(rng.integers(5))]
    elif isinstance(value, str):
        container[key] = [value + "x", value[:-1], value.upper(), "%" + value][int(rng.integers(4))]
    elif isinstance(value, list) and value:
        ops = [lambda v: v[:-1], lambda v: v + v[-1:], lambda v: v[::-1], lambda v: []]
        container[key] = ops[int(rng.integers(4))](value)
    elif isinstance(value, dict) and value:
        names = list(value)
        if rng.integers(2):
            del value[names[int(rng.integers(len(names)))]]
        else:
            value["unexpected"] = 1
    else:
        container[key] = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]


def structural_mutation(data: bytes, rng: np.random.Generator) -> bytes:
    obj = msgpack.unpackb(_payload(data), raw=False)
    for _ in range(int(rng.integers(1, 3))):
        slots = _slots(obj, [])
        container, key = slots[int(rng.integers(len(slots)))]
        _mutate_slot(container, key, rng)
    return _sign(msgpack.packb(obj, use_bin_type=True))


def check_case(original: PEF, data: bytes, mutated: bytes, structural: bool) -> str:
    """'refused', 'identical' or 'valid'; AssertionError for a broken contract."""
    try:
        loaded = load_pef(mutated, "fuzz.pef")
    except PEFError as err:
        assert "fuzz.pef" in str(err), str(err)
        return "refused"
    if not structural or mutated == data:
        assert loaded.to_bytes() == data, "a raw mutation loaded a different program"
        return "identical"
    assert load_pef(loaded.to_bytes()).to_bytes() == loaded.to_bytes()
    return "valid"


def run(n: int, seed: int = 0) -> collections.Counter:
    original = sample_pef()
    data = original.to_bytes()
    rng = np.random.default_rng(seed)
    outcomes: collections.Counter = collections.Counter()
    for i in range(n):
        structural = i % 2 == 1
        mutated = structural_mutation(data, rng) if structural else raw_mutation(data, rng)
        outcomes[("structural" if structural else "raw", check_case(original, data, mutated, structural))] += 1
    return outcomes


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    result = run(count, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    for (kind, outcome), number in sorted(result.items()):
        print(f"{kind:10s} {outcome:9s} {number}")
    print(f"{count} cases, no contract violation")
