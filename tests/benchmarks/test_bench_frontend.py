"""Frontend speed: lowering GPT-2 small (12 layers, 768 wide) and Llama of similar size to IR.

Run with `pytest tests/benchmarks/test_bench_frontend.py --benchmark-enable`; the goal
for GPT-2 small is under one second.
"""
from __future__ import annotations

from compiler import zoo
from compiler.config import parse_overrides, resolve
from compiler.frontend import lower, parse_module

GPT2_SMALL = ["model.n_layer=12", "model.n_embd=768", "model.n_head=12", "model.vocab_size=50257",
              "model.n_positions=1024", "model.seq_len=1024", "model.batch_size=1"]
LLAMA_SMALL = ["model.num_hidden_layers=12", "model.hidden_size=768", "model.intermediate_size=2048",
               "model.num_attention_heads=12", "model.num_key_value_heads=4", "model.vocab_size=32000",
               "model.max_position_embeddings=1024", "model.seq_len=1024", "model.batch_size=1"]


def lower_zoo(name: str, overrides: list[str], training: bool = True):
    module = parse_module(zoo.source(name))
    return lower(module, resolve(module.schema, parse_overrides(overrides)), training)


def test_bench_lower_gpt2_small(benchmark):
    graph = benchmark(lower_zoo, "gpt2", GPT2_SMALL)
    assert graph.param("transformer.h.11.mlp.c_fc.weight").type.shape == (768, 3072)
    assert len(graph.params) == 4 + 12 * 12


def test_bench_lower_llama_small(benchmark):
    graph = benchmark(lower_zoo, "llama", LLAMA_SMALL)
    assert graph.param("model.layers.11.self_attn.k_proj.weight").type.shape == (256, 768)


def test_bench_parse_gpt2(benchmark):
    module = benchmark(parse_module, zoo.source("gpt2"))
    assert [f.name for f in module.schema.fields][:3] == ["vocab_size", "n_positions", "n_embd"]
