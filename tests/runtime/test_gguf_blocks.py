"""A GGUF file whose matrices are stored in the PEF's block type loads without requantizing: the
params are the file's bytes (q/k rows un-permuted as whole rows of blocks); another block type
in the file is dequantized and quantized once."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ir.dtypes
from compiler.driver import CompileOptions, compile_model
from gguf_files import Q, llama_to_gguf
from ir.dtypes import DType, dequantize
from runtime.gguf import read_gguf
from runtime.gguf_model import unpermute
from runtime.generate import load_weights
from runtime.program import Program

LLAMA = Path(__file__).resolve().parents[1] / "fixtures" / "hf" / "llama-tiny"


@pytest.mark.parametrize("kind", [Q.Q4_1, Q.Q8_0])
def test_blocks_of_the_same_type_are_the_file_s_bytes(tmp_path, monkeypatch, kind):
    path = llama_to_gguf(LLAMA, tmp_path / "tiny.gguf", kind)
    dtype = DType(kind.name.lower())
    program = Program(compile_model(CompileOptions(str(LLAMA), inference=True, weight_dtype=dtype.value)).pef)
    calls = []
    monkeypatch.setattr(ir.dtypes, "quantize", lambda *a: calls.append(a) or pytest.fail("requantized"))
    load_weights(program, path)
    assert not calls
    file = read_gguf(path)
    down = program.params["model.layers.0.mlp.down_proj.weight"]
    assert DType.of(down) is dtype
    np.testing.assert_array_equal(down.view(np.uint8).reshape(-1), file.raw("blk.0.ffn_down.weight"))
    q = program.params["model.layers.1.self_attn.q_proj.weight"]
    stored = file.raw("blk.1.attn_q.weight").reshape(q.shape[0], -1)
    np.testing.assert_array_equal(q.view(np.uint8).reshape(q.shape[0], -1), unpermute(stored, 4))
    np.testing.assert_array_equal(dequantize(q), unpermute(file.tensor("blk.1.attn_q.weight"), 4))


def test_another_block_type_is_quantized_once(tmp_path):
    path = llama_to_gguf(LLAMA, tmp_path / "tiny.gguf", Q.Q8_0)
    program = Program(compile_model(CompileOptions(str(LLAMA), inference=True, weight_dtype="q4_1")).pef)
    load_weights(program, path)
    down = program.params["model.layers.0.mlp.down_proj.weight"]
    want = ir.dtypes.quantize(read_gguf(path).tensor("blk.0.ffn_down.weight"), DType.q4_1)
    np.testing.assert_array_equal(down.view(np.uint8), want.view(np.uint8))
