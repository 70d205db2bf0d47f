"""Every zoo model lowers, verifies, and computes what an independent numpy model computes."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from compiler import zoo
from compiler.config import parse_overrides
from compiler.frontend import build
from ir.interpreter import interpret
from ir.printer import print_graph
from ir.verifier import verify

ZOO = ["gpt2", "lenet", "llama", "logreg", "mlp"]
LANGUAGE_MODELS = ("gpt2", "llama")


def lowered(name: str, *overrides: str, training: bool = True):
    graph = build(zoo.source(name), parse_overrides(overrides), training=training)
    verify(graph)
    return graph


def random_params(graph, seed: int = 0, std: float = 0.3) -> dict[str, np.ndarray]:
    """Every param random (biases and norm weights too), so each one shows in the output."""
    rng = np.random.default_rng(seed)
    return {p.name: rng.normal(0.0, std, p.type.shape).astype(np.float32) for p in graph.params}


def test_zoo_lists_the_five_models():
    assert zoo.names() == ZOO


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("training", [True, False])
def test_lowers_and_verifies_with_a_location_on_every_op(name, training):
    graph = lowered(name, training=training)
    assert graph.ops and all(op.locs and Path(op.locs[0].file).is_file()
                                  and op.locs[0].file.endswith(f"compiler/zoo/{name}.rdl") for op in graph.ops)
    if training:  # a language model's loss reads only the counted positions' logits: no output shows them
        assert set(graph.outputs) == {"loss", "accuracy"} | (set() if name in LANGUAGE_MODELS else {"logits"})
        assert graph.outputs["loss"].type.shape == () and graph.outputs["accuracy"].type.shape == ()
    else:
        assert list(graph.outputs) == ["logits"]


@pytest.mark.parametrize("name, inputs", [("gpt2", ["input_ids"]), ("llama", ["input_ids"]),
                                          ("mlp", ["x"]), ("lenet", ["x"]), ("logreg", ["x"])])
def test_inference_needs_only_what_logits_need(name, inputs):
    assert [v.name for v in lowered(name, training=False).inputs] == inputs


@pytest.mark.parametrize("name", ZOO)
def test_lowering_is_deterministic(name):
    assert print_graph(lowered(name)) == print_graph(lowered(name))


# --- numpy references -----------------------------------------------------------------

def softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def log_softmax(x):
    s = x - x.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


def cross_entropy(logits, labels, mask=None):
    nll = -np.take_along_axis(log_softmax(logits), labels[..., None].astype(np.int64), -1)[..., 0]
    weights = np.ones_like(nll) if mask is None else mask.astype(np.float64)
    return (nll * weights).sum() / max(weights.sum(), 1.0)


def causal_attention(q, k, v):
    s = q.shape[-2]
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
    return softmax(scores) @ v


def split_heads(t, heads):
    b, s, d = t.shape
    return t.reshape(b, s, heads, d // heads).transpose(0, 2, 1, 3)


def merge_heads(t):
    b, h, s, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gpt2_numpy(p, ids, n_layer, n_head, eps=1e-5):
    p = {k: v.astype(np.float64) for k, v in p.items()}
    x = p["transformer.wte.weight"][ids] + p["transformer.wpe.weight"][: ids.shape[1]]
    for i in range(n_layer):
        w = {k[len(f"transformer.h.{i}."):]: v for k, v in p.items() if k.startswith(f"transformer.h.{i}.")}
        h = layer_norm(x, w["ln_1.weight"], w["ln_1.bias"], eps)
        q, k, v = np.split(h @ w["attn.c_attn.weight"] + w["attn.c_attn.bias"], 3, axis=-1)
        y = merge_heads(causal_attention(split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)))
        x = x + y @ w["attn.c_proj.weight"] + w["attn.c_proj.bias"]
        h = layer_norm(x, w["ln_2.weight"], w["ln_2.bias"], eps)
        x = x + gelu_tanh(h @ w["mlp.c_fc.weight"] + w["mlp.c_fc.bias"]) @ w["mlp.c_proj.weight"] + w["mlp.c_proj.bias"]
    x = layer_norm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    return x @ p["transformer.wte.weight"].T


def llama_numpy(p, ids, n_layer, n_head, n_kv, theta=10000.0, eps=1e-6):
    p = {k: v.astype(np.float64) for k, v in p.items()}
    s = ids.shape[1]
    hidden = p["model.embed_tokens.weight"].shape[1]
    hd = hidden // n_head
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    angles = np.arange(s)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(t):
        half = t.shape[-1] // 2
        return t * cos + np.concatenate([-t[..., half:], t[..., :half]], -1) * sin

    x = p["model.embed_tokens.weight"][ids]
    for i in range(n_layer):
        w = {k[len(f"model.layers.{i}."):]: v for k, v in p.items() if k.startswith(f"model.layers.{i}.")}
        h = rms(x, w["input_layernorm.weight"])
        q = rope(split_heads(h @ w["self_attn.q_proj.weight"].T, n_head))
        k = rope(split_heads(h @ w["self_attn.k_proj.weight"].T, n_kv))
        v = split_heads(h @ w["self_attn.v_proj.weight"].T, n_kv)
        k, v = np.repeat(k, n_head // n_kv, axis=1), np.repeat(v, n_head // n_kv, axis=1)
        x = x + merge_heads(causal_attention(q, k, v)) @ w["self_attn.o_proj.weight"].T
        h = rms(x, w["post_attention_layernorm.weight"])
        gate = h @ w["mlp.gate_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w["mlp.up_proj.weight"].T)) @ w["mlp.down_proj.weight"].T
    return rms(x, p["model.norm.weight"]) @ p["lm_head.weight"].T


def conv2d_same_3x3(x, w, b):
    """A direct loop convolution, padding 1."""
    n, c, hgt, wid = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], hgt, wid))
    for i in range(hgt):
        for j in range(wid):
            patch = padded[:, :, i:i + 3, j:j + 3]
            out[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return out + b[None, :, None, None]


def max_pool_2x2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def lm_metrics(logits, ids, types):
    # trained: completion targets (1) and the separator (end-of-sequence) targets closing them (3)
    pred, targets, mask = logits[:, :-1], ids[:, 1:], np.isin(types[:, 1:], (1, 3))
    hits = (pred.argmax(-1) == targets) & mask
    return cross_entropy(pred, targets, mask), hits.sum() / max(mask.sum(), 1)


# --- comparisons ------------------------------------------------------------------------

def test_logreg_matches_numpy():
    graph = lowered("logreg")
    p = random_params(graph)
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(16, 64)).astype(np.float32), rng.integers(0, 10, 16).astype(np.int32)
    out = interpret(graph, {"x": x, "labels": labels}, p).outputs
    logits = x.astype(np.float64) @ p["fc.weight"].T + p["fc.bias"]
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4)
    np.testing.assert_allclose(out["loss"], cross_entropy(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(out["accuracy"], (logits.argmax(-1) == labels).mean())


def test_mlp_matches_numpy_and_the_torch_fixture():
    from safetensors.numpy import load_file

    graph = lowered("mlp")
    assert {p.name: p.type.shape for p in graph.params} == {
        "fc1.weight": (32, 64), "fc1.bias": (32,), "fc2.weight": (10, 32), "fc2.bias": (10,)}
    ref = np.load("tests/fixtures/mlp/trajectory.npz")
    p = load_file("tests/fixtures/mlp/params_init.safetensors")
    out = interpret(graph, {"x": ref["x"], "labels": ref["labels"]}, p).outputs
    h = np.maximum(ref["x"].astype(np.float64) @ p["fc1.weight"].T + p["fc1.bias"], 0)
    logits = h @ p["fc2.weight"].T + p["fc2.bias"]
    np.testing.assert_allclose(out["logits"], logits, atol=1e-5)
    np.testing.assert_allclose(out["logits"], ref["logits_init"], atol=1e-5)
    np.testing.assert_allclose(out["loss"], ref["losses"][0], rtol=1e-5)


def test_mlp_init_follows_torch_linear_bounds():
    from ir.interpreter import initial_params

    params = initial_params(lowered("mlp"), seed=3)
    assert 0.1 < np.abs(params["fc1.weight"]).max() <= 1 / 8
    assert 0.1 < np.abs(params["fc1.bias"]).max() <= 1 / 8
    assert np.abs(params["fc2.weight"]).max() <= 32 ** -0.5


def test_lenet_matches_numpy():
    graph = lowered("lenet")
    p = random_params(graph)
    rng = np.random.default_rng(2)
    x, labels = rng.normal(size=(16, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 16).astype(np.int32)
    out = interpret(graph, {"x": x, "labels": labels}, p).outputs
    q = {k: v.astype(np.float64) for k, v in p.items()}
    h = max_pool_2x2(np.maximum(conv2d_same_3x3(x.astype(np.float64), q["conv1.weight"], q["conv1.bias"]), 0))
    h = max_pool_2x2(np.maximum(conv2d_same_3x3(h, q["conv2.weight"], q["conv2.bias"]), 0))
    h = np.maximum(h.reshape(16, -1) @ q["fc1.weight"].T + q["fc1.bias"], 0)
    logits = h @ q["fc2.weight"].T + q["fc2.bias"]
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4)
    np.testing.assert_allclose(out["loss"], cross_entropy(logits, labels), rtol=1e-5)


def lm_inputs(vocab: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (2, 16)).astype(np.int32)
    types = rng.integers(0, 4, (2, 16)).astype(np.int32)  # prompt, completion, padding, separator
    return ids, types


def lm_outputs(name: str, overrides: tuple[str, ...], ids, types, seed: int = 0) -> tuple[dict, dict]:
    """(params, outputs): the forward lowering's logits and the training lowering's loss and
    accuracy, for the same random params."""
    graph = lowered(name, *overrides)
    p = random_params(graph, seed)
    out = interpret(graph, {"input_ids": ids, "token_type_ids": types}, p).outputs
    forward = interpret(lowered(name, *overrides, training=False), {"input_ids": ids}, p).outputs
    return p, {**out, **forward}


def test_gpt2_matches_numpy():
    ids, types = lm_inputs(128)
    p, out = lm_outputs("gpt2", ("model.n_layer=3",), ids, types)
    assert "lm_head.weight" not in p
    logits = gpt2_numpy(p, ids, n_layer=3, n_head=4)
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)
    loss, accuracy = lm_metrics(logits, ids, types)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(out["accuracy"], accuracy, rtol=1e-6)


def test_llama_matches_numpy():
    ids, types = lm_inputs(128, seed=4)
    p, out = lm_outputs("llama", ("model.num_hidden_layers=3", "model.num_key_value_heads=1"), ids, types)
    logits = llama_numpy(p, ids, n_layer=3, n_head=4, n_kv=1)
    np.testing.assert_allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)
    loss, accuracy = lm_metrics(logits, ids, types)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(out["accuracy"], accuracy, rtol=1e-6)


@pytest.mark.parametrize("name, overrides", [("gpt2", ("model.n_layer=1",)), ("llama", ("model.num_hidden_layers=1",))])
def test_a_training_step_heads_only_the_counted_positions(name, overrides):
    """The LM head's product reads zero rows where the loss counts no target (rows the JIT's gemm
    skips) and the hidden state elsewhere; the metrics are the full logits' (`test_*_matches_numpy`)."""
    graph = lowered(name, *overrides)
    (head,) = [op for op in graph.ops
               if op.name == "matmul" and op.attrs["transpose_b"] and op.result.type.shape[-1] == 128]
    graph.outputs["head_input"] = head.operands[0]
    ids, types = lm_inputs(128)
    rows = interpret(graph, {"input_ids": ids, "token_type_ids": types}, random_params(graph)).outputs["head_input"]
    counted = np.isin(np.pad(types[:, 1:], ((0, 0), (0, 1))), (1, 3))
    assert not rows[~counted].any() and rows[counted].any(axis=-1).all()


def test_llama_tied_embeddings_and_biases_change_the_params():
    graph = lowered("llama", "model.tie_word_embeddings=true", "model.attention_bias=true", "model.mlp_bias=true")
    names = {p.name for p in graph.params}
    assert "lm_head.weight" not in names
    assert {"model.layers.1.self_attn.q_proj.bias", "model.layers.0.mlp.down_proj.bias"} <= names


def test_overrides_grow_the_model():
    graph = lowered("gpt2", "model.n_layer=4", "model.n_embd=64", "model.n_head=8", "model.batch_size=3")
    shapes = {p.name: p.type.shape for p in graph.params}
    assert shapes["transformer.h.3.mlp.c_fc.weight"] == (64, 256)  # n_inner follows n_embd
    assert graph.input("input_ids").type.shape == (3, 16)
    assert len(graph.params) == 4 + 12 * 4
