"""Internal consistency of the committed PyTorch / transformers reference fixtures.

numpy + safetensors only (no torch, no model code). These checks show that the
files under tests/fixtures/ hold what tests/fixtures/README.md says they hold: the
MLP trajectory is recomputed from scratch with a numpy forward, a hand-written
backward, and a numpy AdamW with global-norm clipping; for the HF fixtures the keys,
shapes, dtypes, data layout and gradient norms are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

FIX = Path(__file__).resolve().parent / "fixtures"
HF_KINDS = ("gpt2-tiny", "llama-tiny")
#: the Llama family's other members (tests/fixtures/README.md): the same reference files
FAMILY_KINDS = ("qwen2-tiny", "mistral-tiny", "gemma-tiny")

LR_MLP = 1e-2
LR_FT = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
WD = 0.01
MAX_NORM = 1.0


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- numpy references


def mlp_forward_backward(p: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray):
    """Loss and gradients of fc2(relu(fc1(x))) with mean cross-entropy, in float64."""
    W1, b1 = p["fc1.weight"].astype(np.float64), p["fc1.bias"].astype(np.float64)
    W2, b2 = p["fc2.weight"].astype(np.float64), p["fc2.bias"].astype(np.float64)
    x = x.astype(np.float64)
    n = x.shape[0]
    h = x @ W1.T + b1
    a = np.maximum(h, 0.0)
    z = a @ W2.T + b2
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
    loss = float(np.mean(lse - z[np.arange(n), labels]))
    prob = np.exp(z - lse[:, None])
    dz = prob
    dz[np.arange(n), labels] -= 1.0
    dz /= n
    da = dz @ W2
    dh = da * (h > 0)
    grads = {
        "fc2.weight": dz.T @ a,
        "fc2.bias": dz.sum(axis=0),
        "fc1.weight": dh.T @ x,
        "fc1.bias": dh.sum(axis=0),
    }
    return loss, grads


def global_norm(grads: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())))


def clip(grads: dict[str, np.ndarray], max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6))."""
    norm = global_norm(grads)
    coef = min(1.0, max_norm / (norm + 1e-6))
    return {k: g.astype(np.float64) * coef for k, g in grads.items()}, norm


class AdamW:
    """torch.optim.AdamW (decoupled weight decay, bias-corrected, eps outside the sqrt)."""

    def __init__(self, params: dict[str, np.ndarray], lr: float) -> None:
        self.lr = lr
        self.t = 0
        self.m = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
        self.v = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b1, b2 = BETAS
        self.t += 1
        bc1 = 1.0 - b1**self.t
        bc2 = 1.0 - b2**self.t
        out = {}
        for k, p in params.items():
            g = grads[k].astype(np.float64)
            p = p.astype(np.float64) * (1.0 - self.lr * WD)
            self.m[k] = b1 * self.m[k] + (1.0 - b1) * g
            self.v[k] = b2 * self.v[k] + (1.0 - b2) * g * g
            denom = np.sqrt(self.v[k]) / np.sqrt(bc2) + EPS
            out[k] = p - (self.lr / bc1) * self.m[k] / denom
        return out


def assert_dicts_close(got: dict, want: dict, rtol: float, atol: float, what: str) -> None:
    assert sorted(got) == sorted(want), what
    for k in want:
        assert got[k].shape == want[k].shape, f"{what} {k}"
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=f"{what} {k}")


# --------------------------------------------------------------------------- MLP


@pytest.fixture(scope="module")
def mlp():
    d = npz(FIX / "mlp" / "trajectory.npz")
    d["init"] = load_file(str(FIX / "mlp" / "params_init.safetensors"))
    d["grads1"] = load_file(str(FIX / "mlp" / "grads_step1.safetensors"))
    d["steps"] = [load_file(str(FIX / "mlp" / f"params_step{i}.safetensors")) for i in (1, 2, 3)]
    return d


def test_mlp_layout(mlp):
    shapes = {"fc1.weight": (32, 64), "fc1.bias": (32,), "fc2.weight": (10, 32), "fc2.bias": (10,)}
    for params in [mlp["init"], mlp["grads1"], *mlp["steps"]]:
        assert {k: v.shape for k, v in params.items()} == shapes
        assert all(v.dtype == np.float32 for v in params.values())
    assert mlp["x"].shape == (16, 64) and mlp["x"].dtype == np.float32
    assert mlp["labels"].shape == (16,) and mlp["labels"].dtype == np.int32
    assert mlp["labels"].min() >= 0 and mlp["labels"].max() < 10
    assert mlp["losses"].shape == (3,) and mlp["losses"].dtype == np.float64
    assert mlp["grad_norms"].shape == (3,) and mlp["grad_norms"].dtype == np.float64
    assert mlp["logits_init"].shape == (16, 10)
    # torch.nn.Linear default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    assert np.abs(mlp["init"]["fc1.weight"]).max() <= 1 / np.sqrt(64)
    assert np.abs(mlp["init"]["fc2.weight"]).max() <= 1 / np.sqrt(32)
    # Clipping is exercised: every pre-clip norm is above max_norm.
    assert (mlp["grad_norms"] > MAX_NORM).all()


def test_mlp_step1_loss_logits_and_grads(mlp):
    p = mlp["init"]
    logits = mlp["x"].astype(np.float64) @ p["fc1.weight"].T.astype(np.float64) + p["fc1.bias"]
    logits = np.maximum(logits, 0) @ p["fc2.weight"].T.astype(np.float64) + p["fc2.bias"]
    np.testing.assert_allclose(logits, mlp["logits_init"], rtol=1e-5, atol=1e-6)
    loss, grads = mlp_forward_backward(p, mlp["x"], mlp["labels"])
    np.testing.assert_allclose(loss, mlp["losses"][0], rtol=1e-6)
    assert_dicts_close(grads, mlp["grads1"], rtol=1e-5, atol=1e-7, what="grad")
    np.testing.assert_allclose(global_norm(mlp["grads1"]), mlp["grad_norms"][0], rtol=1e-6)


def test_mlp_step1_params_from_stored_grads(mlp):
    """AdamW + clipping applied to the stored (torch) gradients gives the stored params."""
    g, norm = clip(mlp["grads1"], MAX_NORM)
    np.testing.assert_allclose(norm, mlp["grad_norms"][0], rtol=1e-6)
    new = AdamW(mlp["init"], LR_MLP).step(mlp["init"], g)
    assert_dicts_close(new, mlp["steps"][0], rtol=0, atol=1e-6, what="params after step 1")


def test_mlp_full_trajectory_from_scratch(mlp):
    """Three steps recomputed entirely in numpy (float64) track the stored trajectory.

    Sensitivity (measured when the fixtures were made): the faithful recomputation
    agrees to ~1e-7; dropping weight decay moves step-1 params by ~2e-5, dropping
    clipping moves step-2 params by ~8e-4, so 1e-6 tells the definitions apart.
    """
    params = {k: v.astype(np.float64) for k, v in mlp["init"].items()}
    opt = AdamW(params, LR_MLP)
    for s in range(3):
        loss, grads = mlp_forward_backward(params, mlp["x"], mlp["labels"])
        np.testing.assert_allclose(loss, mlp["losses"][s], rtol=1e-5)
        g, norm = clip(grads, MAX_NORM)
        np.testing.assert_allclose(norm, mlp["grad_norms"][s], rtol=1e-5)
        params = opt.step(params, g)
        assert_dicts_close(params, mlp["steps"][s], rtol=0, atol=1e-6, what=f"params after step {s + 1}")


# --------------------------------------------------------------------------- HF checkpoints


@pytest.mark.parametrize("kind", HF_KINDS)
def test_hf_checkpoint_files(kind):
    ckpt = FIX / "hf" / kind
    cfg = json.loads((ckpt / "config.json").read_text())
    sd = load_file(str(ckpt / "model.safetensors"))
    assert all(v.dtype == np.float32 for v in sd.values())
    assert cfg["vocab_size"] == 128
    if kind == "gpt2-tiny":
        assert cfg["model_type"] == "gpt2" and cfg["tie_word_embeddings"] is True
        assert cfg["n_embd"] == 32 and cfg["n_layer"] == 2 and cfg["n_head"] == 4
        assert cfg["activation_function"] == "gelu_new"
        # Tied weight saved once, as the input embedding.
        assert "lm_head.weight" not in sd
        assert sd["transformer.wte.weight"].shape == (128, 32)
        assert sd["transformer.wpe.weight"].shape == (64, 32)
        # Conv1D convention: weight is [in, out].
        assert sd["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
        assert sd["transformer.h.0.mlp.c_fc.weight"].shape == (32, 128)
        assert len(sd) == 2 + 12 * 2 + 2
    else:
        assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is False
        theta = cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta"))
        assert theta == 10000.0
        assert cfg["num_key_value_heads"] == 2 and cfg["num_attention_heads"] == 4
        assert sd["lm_head.weight"].shape == (128, 32)
        assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (32, 32)
        assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)
        assert sd["model.layers.0.mlp.gate_proj.weight"].shape == (64, 32)
        assert len(sd) == 3 + 9 * 2


@pytest.mark.parametrize("kind", HF_KINDS + FAMILY_KINDS)
def test_hf_expected(kind):
    cfg = json.loads((FIX / "hf" / kind / "config.json").read_text())
    e = npz(FIX / "ref" / kind / "expected.npz")
    assert e["input_ids"].shape == (2, 16) and e["input_ids"].dtype == np.int32
    assert e["logits"].shape == (2, 16, 128) and e["logits"].dtype == np.float32
    assert np.isfinite(e["logits"]).all() and e["logits"].std() > 0.5
    eos = int(cfg["eos_token_id"])
    assert int(e["gen_eos_token_id"]) == eos
    n_new = int(e["gen_max_new_tokens"])
    assert n_new == 12
    assert e["gen_eos_stopped"].shape == (3,) and not e["gen_eos_stopped"].any()
    assert (e["gen_min_margin"] >= 1e-3).all()
    outs = []
    for i, plen in enumerate((4, 7, 11)):
        prompt, new = e[f"gen_prompt_{i}"], e[f"gen_new_{i}"]
        assert prompt.shape == (plen,) and prompt.dtype == np.int32
        assert new.shape == (n_new,) and new.dtype == np.int32
        assert not (prompt == eos).any() and not (new == eos).any()
        assert len(set(new.tolist())) >= 5
        outs.append(tuple(new.tolist()))
    assert len(set(outs)) == 3


@pytest.mark.parametrize("kind", HF_KINDS + FAMILY_KINDS)
def test_hf_finetune_files(kind):
    ref = FIX / "ref" / kind
    init = load_file(str(FIX / "hf" / kind / "model.safetensors"))
    ft = npz(ref / "finetune.npz")
    ids, tt = ft["input_ids"], ft["token_type_ids"]
    assert ids.shape == tt.shape == (5, 2, 16) and ids.dtype == tt.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < 128
    # Every row: prompt (0) then completion (1) then padding (2), each non-empty.
    for row in tt.reshape(-1, 16):
        assert (np.diff(row) >= 0).all() and set(row.tolist()) == {0, 1, 2}
    assert ft["losses"].shape == ft["grad_norms"].shape == (5,)
    assert ft["losses"].dtype == ft["grad_norms"].dtype == np.float64
    assert np.isfinite(ft["losses"]).all() and (ft["grad_norms"] > MAX_NORM).all()

    grads = load_file(str(ref / "grads_step1.safetensors"))
    p3 = load_file(str(ref / "params_step3.safetensors"))
    p5 = load_file(str(ref / "params_step5.safetensors"))
    for d in (grads, p3, p5):
        assert sorted(d) == sorted(init)
        assert all(d[k].shape == init[k].shape and d[k].dtype == np.float32 for k in init)
    np.testing.assert_allclose(global_norm(grads), ft["grad_norms"][0], rtol=1e-5)
    # Adam moves each coordinate by at most ~lr per step (plus weight decay).
    # (|m_hat / sqrt(v_hat)| <= ~1.01 for t <= 5 with these betas.)
    for k in init:
        wmax = float(np.abs(init[k]).max())
        for n, p in ((3, p3), (5, p5)):
            bound = n * LR_FT * (1.05 + WD * wmax) + 1e-6
            assert np.abs(p[k] - init[k]).max() <= bound, k
        assert np.abs(p5[k] - p3[k]).max() > 0, k
    # Llama (untied): embedding rows of tokens absent from step 1's batch get exactly
    # zero gradient. (For tied GPT-2 every row also gets the output-projection term.)
    if kind == "llama-tiny":
        unused = np.setdiff1d(np.arange(128), ids[0].ravel())
        assert np.all(grads["model.embed_tokens.weight"][unused] == 0)


def test_versions_recorded():
    v = json.loads((FIX / "versions.json").read_text())
    assert set(v) >= {"torch", "transformers", "numpy"}
