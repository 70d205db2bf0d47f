"""KV caches are written in place: the memory plan gives each cache write the cache's own range,
its kernel writes only the new rows, and the runtime copies or swaps nothing per token."""
from __future__ import annotations

import numpy as np

from backend.pef.stages import UpdateSliceStage
from generate_helpers import program_steps
from runtime.executor import swap_pairs


def cache_writes(pef):
    return [(k, s) for k in pef.kernels for s in k.stages if isinstance(s, UpdateSliceStage)]


def test_cache_writes_are_planned_in_place(compiled):
    pef = compiled["gpt2-tiny"].pef
    for name in ("prefill", "decode"):
        entry = pef.entry(name)
        writes = cache_writes(entry)
        assert len(writes) == 4 and all(stage.in_place for _, stage in writes)
        where = entry.memory.lookup()
        tensor_of = {p.name: p.tensor for p in entry.symbols.params}
        for update in entry.symbols.updates:
            a, b = where[update.tensor], where[tensor_of[update.param]]
            assert (a.arena, a.offset, a.nbytes) == (b.arena, b.offset, b.nbytes)
        assert swap_pairs(entry) == ({}, [])
        for kernel, stage in writes:  # modeled traffic: the new rows, not the whole cache
            rows = np.prod(stage.update_shape) * 4
            assert sum(kernel.cost.bytes_written.values()) == rows
    cache = next(p for p in pef.symbols.params if p.role == "state")
    assert np.prod(cache.shape) * 4 > 16 * rows


def test_a_decode_step_changes_only_the_rows_it_writes(compiled):
    steps = program_steps(compiled["llama-tiny"], "llama-tiny")
    program = steps.program
    caches = [name for name, role in program.params.roles().items() if role == "state"]
    rng = np.random.default_rng(0)
    for name in caches:
        program.params[name] = rng.standard_normal(program.params[name].shape).astype(np.float32)
    before = {name: program.params[name] for name in caches}
    positions = np.array([5, steps.limits.max_seq_length, 0], np.int32)  # row 1 parked past the end
    steps.decode(np.array([[3], [4], [5]], np.int32), positions)
    for name in caches:
        after = program.params[name]
        changed = np.argwhere(np.any(after != before[name], axis=-1))  # [row, head, position]
        assert set(map(tuple, changed[:, [0, 2]])) == {(0, 5), (2, 0)}, name
