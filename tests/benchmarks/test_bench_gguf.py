"""GGUF reading: the header of a file with a 49,152-token vocabulary, and dequantizing a
576 x 1536 weight (SmolLM2-135M's MLP projection) from each of the common types to f32.

    pytest tests/benchmarks/test_bench_gguf.py --benchmark-enable
"""
from __future__ import annotations

import numpy as np
import pytest

from gguf_files import Q, random_blocks, write_gguf
from runtime.gguf import _read, read_gguf

TYPES = (Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    rng = np.random.default_rng(0)
    tensors = {kind.name: (random_blocks(rng, kind, 576, 1536 // (256 if kind.name.endswith("_K") else 32)
                                         * (8 if kind == Q.F16 else 1)), kind) for kind in TYPES}
    return read_gguf(write_gguf(tmp_path_factory.mktemp("bench") / "w.gguf", tensors))


@pytest.mark.parametrize("kind", TYPES, ids=lambda k: k.name)
def test_dequantize(benchmark, weights, kind):
    out = benchmark(weights.tensor, kind.name)
    assert out.shape[0] == 576 and out.dtype == np.float32


def test_read_a_header_with_a_large_vocabulary(benchmark, tmp_path):
    tokens = [f"token{i}" for i in range(49152)]
    meta = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": [f"a{i} b{i}" for i in range(48900)],
            "tokenizer.ggml.token_type": [1] * len(tokens)}
    path = write_gguf(tmp_path / "vocab.gguf", {"t": np.zeros(32, np.float32)}, meta)
    file = read_gguf(path)

    def uncached():
        _read.cache_clear()
        return read_gguf(path)

    assert benchmark(uncached).metadata["tokenizer.ggml.tokens"] == file.metadata["tokenizer.ggml.tokens"]
