"""A GGUF file as a model and a checkpoint: the tiny Llama fixture converted as llama.cpp does gives
transformers' logits and greedy tokens; its tokenizer equals the Hugging Face one it was made from."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from compiler.driver import CompileOptions, compile_model
from gguf_files import Q, llama_to_gguf, tokenizer_metadata, train_bpe, write_gguf
from ir.errors import CheckpointError
from ir.interpreter import interpret
from runtime.checkpoint import load_hf_checkpoint, source_config
from runtime.gguf import read_gguf
from runtime.gguf_model import hf_config, hf_tensors, unpermute
from runtime.gguf_tokenizer import tokenizer_config
from runtime.generate import ProgramSteps, Prompt, generate, load_weights
from runtime.program import Program
from runtime.sampling import SamplingOptions
from runtime.tokenizer import load_tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LLAMA = FIXTURES / "hf" / "llama-tiny"
EXPECTED = FIXTURES / "ref" / "llama-tiny" / "expected.npz"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    return llama_to_gguf(LLAMA, tmp_path_factory.mktemp("gguf") / "llama-tiny.gguf")


def compiled(model: Path, gguf: bool, inference: bool = True, emit: str | None = "ir", batch_size=None):
    config = hf_config(read_gguf(model)) if gguf else None
    return compile_model(CompileOptions(model=str(model), inference=inference, emit=emit, hf_config=config,
                                        batch_size=batch_size))


def test_unpermute_inverts_llama_cpp_s_permutation():
    from gguf_files import permute

    weight = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
    for heads in (1, 2, 3, 6):
        assert not np.array_equal(permute(weight, heads), weight)
        assert np.array_equal(unpermute(permute(weight, heads), heads), weight)


def test_the_config_is_the_folder_s(llama_gguf):
    folder = json.loads((LLAMA / "config.json").read_text())
    config = hf_config(read_gguf(llama_gguf))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                "tie_word_embeddings", "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id"):
        assert config[key] == folder[key], key
    assert config["rope_theta"] == folder["rope_parameters"]["rope_theta"] and config["model_type"] == "llama"
    ours, theirs = compiled(llama_gguf, True).config, compiled(LLAMA, False).config
    assert ours.pop("initializer_range") == 0.02 != theirs.pop("initializer_range")  # GGUF keeps no init range
    assert ours == theirs
    assert source_config(llama_gguf) == config


def test_tensors_are_the_folder_s_exactly(llama_gguf):
    want = load_file(LLAMA / "model.safetensors")
    got = hf_tensors(llama_gguf)
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert np.array_equal(got[name], array), name


def test_logits_match_transformers(llama_gguf):
    result = compiled(llama_gguf, True)
    assert result.checkpoint == llama_gguf
    loaded = load_hf_checkpoint(llama_gguf, {p.name: p.type for p in result.graph.params}, strict=True)
    expected = np.load(EXPECTED)
    logits = interpret(result.graph, {"input_ids": expected["input_ids"]}, loaded.tensors).outputs["logits"]
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-4, rtol=0)


def test_greedy_tokens_match_transformers(llama_gguf):
    result = compiled(llama_gguf, True, emit=None, batch_size=3)
    program = Program(result.pef)
    assert load_weights(program, llama_gguf) == ()
    expected = np.load(EXPECTED)
    prompts = [Prompt(tuple(int(t) for t in expected[f"gen_prompt_{i}"]), str(i)) for i in range(3)]
    got = generate(ProgramSteps(program), prompts, 12, SamplingOptions(temperature=0.0),
                   int(expected["gen_eos_token_id"]))
    assert [list(c.token_ids) for c in got.completions] == [expected[f"gen_new_{i}"].tolist() for i in range(3)]


def test_q8_0_weights_stay_close(tmp_path):
    path = llama_to_gguf(LLAMA, tmp_path / "q8.gguf", Q.Q8_0)
    assert read_gguf(path).tensors["blk.0.attn_q.weight"].type == Q.Q8_0
    result = compiled(path, True)
    loaded = load_hf_checkpoint(path, {p.name: p.type for p in result.graph.params})
    expected = np.load(EXPECTED)
    want = load_file(LLAMA / "model.safetensors")["model.layers.0.self_attn.k_proj.weight"]
    np.testing.assert_allclose(loaded.tensors["model.layers.0.self_attn.k_proj.weight"], want, atol=0.01)
    logits = interpret(result.graph, {"input_ids": expected["input_ids"]}, loaded.tensors).outputs["logits"]
    error = np.abs(logits - expected["logits"]).max()
    assert 1e-4 < error < 0.05 * np.abs(expected["logits"]).max()  # 8-bit weights: close, not exact


@pytest.mark.parametrize("key, value, message", [
    ("general.architecture", "mamba", "architecture 'mamba' is not supported (supported: llama, qwen2, gemma"),
    ("llama.rope.scaling.type", "yarn", "'llama.rope.scaling.type' 'yarn' is not supported"),
    ("llama.rope.dimension_count", 4, "partial rotary embeddings are not supported"),
    ("llama.attention.head_count", "four", "metadata 'llama.attention.head_count' is 'four', expected int"),
    ("llama.attention.head_count_kv", 0, "'llama.attention.head_count' (4) and '_kv' (0) must be positive"),
])
def test_unsupported_models_are_named(tmp_path, key, value, message):
    path = llama_to_gguf(LLAMA, tmp_path / "m.gguf", extra={key: value})
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hf_config(read_gguf(path))


def test_llama_3_1_rope_frequencies_are_refused(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", {"token_embd.weight": np.zeros((4, 8), np.float32),
                                            "rope_freqs.weight": np.ones(4, np.float32)},
                      {"llama.attention.head_count": 2, "llama.embedding_length": 8})
    with pytest.raises(CheckpointError, match="tensor 'rope_freqs.weight' .* is not supported"):
        hf_config(read_gguf(path))


def test_a_missing_key_is_named(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(CheckpointError, match="metadata 'llama.attention.head_count' is missing"):
        hf_config(read_gguf(path))


# --- the tokenizer ------------------------------------------------------------------------------
SAMPLE = ("Hello world! 12345 <|im_start|>user\nWhat is 2+2?<|im_end|>\n  The  quick brown fox's 3.14159 "
          "jumps\n\n\tover émigré — 東京 🙂 \"quoted\" it's   spaced   out\r\n")


@pytest.fixture(scope="module")
def hf_tokenizer_json(tmp_path_factory):
    """A byte-level BPE trained here, with Digits + ByteLevel pre-tokenization (SmolLM2's)."""
    return train_bpe(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def tokenizer_gguf(path: Path, tokenizer_json: Path, pre: str, **extra) -> Path:
    meta = {**tokenizer_metadata(tokenizer_json, pre, "<|im_end|>"), **extra}
    return write_gguf(path, {"token_embd.weight": np.zeros((4, 8), np.float32)}, meta)


def test_tokenizer_equals_the_hugging_face_one(tmp_path, hf_tokenizer_json):
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    path = tokenizer_gguf(tmp_path / "t.gguf", hf_tokenizer_json, "smollm", **{"tokenizer.chat_template": template})
    ours, theirs = load_tokenizer(path), load_tokenizer(hf_tokenizer_json)
    midsummer = (ROOT / "tools" / "data" / "midsummer.txt").read_text()[:20000]
    for text in (SAMPLE, midsummer):
        ids = ours.encode(text)
        assert ids == theirs.encode(text) and len(ids) > 10
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False) == text
    assert ours.encode("<|im_start|>") == theirs.encode("<|im_start|>") == [1]
    assert ours.decode(ours.encode(SAMPLE)) == SAMPLE.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert (ours.eos_token, ours.eos_id, ours.vocab_size) == ("<|im_end|>", 2, theirs.vocab_size)
    assert tokenizer_config(path) == {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
                                      "chat_template": template}


def test_saved_tokenizer_keeps_the_chat_template(tmp_path, hf_tokenizer_json):
    path = tokenizer_gguf(tmp_path / "t.gguf", hf_tokenizer_json, "smollm", **{"tokenizer.chat_template": "{{ x }}"})
    load_tokenizer(path).save(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == "{{ x }}" and config["eos_token"] == "<|im_end|>"
    assert load_tokenizer(tmp_path / "saved").encode(SAMPLE) == load_tokenizer(path).encode(SAMPLE)


def test_plain_gpt2_pre_tokenizer_differs_on_digits(tmp_path, hf_tokenizer_json):
    ours = load_tokenizer(tokenizer_gguf(tmp_path / "t.gguf", hf_tokenizer_json, "gpt2"))
    smollm = load_tokenizer(tokenizer_gguf(tmp_path / "s.gguf", hf_tokenizer_json, "smollm"))
    assert len(ours.encode(" 12345")) <= len(smollm.encode(" 12345")) == 6


@pytest.mark.parametrize("key, value, message", [
    ("tokenizer.ggml.model", "llama", "tokenizer model 'tokenizer.ggml.model' = 'llama' is not supported"),
    ("tokenizer.ggml.pre", "deepseek-llm", "pre-tokenizer 'tokenizer.ggml.pre' = 'deepseek-llm' is not supported"),
    ("tokenizer.ggml.eos_token_id", 100000, "'tokenizer.ggml.eos_token_id' is 100000, outside the"),
    ("tokenizer.ggml.merges", ["a b c"], "'tokenizer.ggml.merges' holds 'a b c'"),
    ("tokenizer.ggml.token_type", [1, 1], "'tokenizer.ggml.token_type' has 2 entries for"),
])
def test_unsupported_tokenizers_are_named(tmp_path, hf_tokenizer_json, key, value, message):
    path = tokenizer_gguf(tmp_path / "t.gguf", hf_tokenizer_json, "smollm", **{key: value})
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_tokenizer(path)


# --- the command line ---------------------------------------------------------------------------
def rduflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_compile_and_generate_from_a_gguf_file(tmp_path, llama_gguf):
    done = rduflow("compile", str(llama_gguf), "--inference", "-b", "1", "-o", "out", "--pef-name", "g", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = np.load(EXPECTED)
    prompt = ",".join(str(t) for t in expected["gen_prompt_0"])
    done = rduflow("run", "out/g/g.pef", "--inference", "--checkpoint", str(llama_gguf), "--prompt-ids", prompt,
                   "--max-new-tokens", "12", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["token_ids"] == [expected["gen_new_0"].tolist()]


def test_a_bad_gguf_file_is_one_line_and_exit_1(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    for args in (("compile", str(bad)), ("run", "none.pef", "--checkpoint", str(bad))):
        done = rduflow(*args, cwd=tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "not a valid GGUF file: it claims" in rduflow("compile", str(bad), cwd=tmp_path).stderr


def test_finetuning_from_a_gguf_file_gives_the_reference_losses(tmp_path, llama_gguf):
    """Five AdamW steps from the GGUF's weights: transformers' losses and params, and a checkpoint folder
    in Llama's Hugging Face layout whose config.json comes from the GGUF's metadata."""
    import csv

    import h5py

    from tools.cli import main

    with np.load(FIXTURES / "ref" / "llama-tiny" / "finetune.npz") as z:
        ids, types, losses = (z[k] for k in ("input_ids", "token_type_ids", "losses"))
    with h5py.File(tmp_path / "batches.hdf5", "w") as f:
        f.create_dataset("input_ids", data=ids.reshape(10, 16).astype(np.int32))
        f.create_dataset("token_type_ids", data=types.reshape(10, 16).astype(np.int32))
    assert main(["compile", str(llama_gguf), "--weight-decay", "0.01", "--max-grad-norm", "1.0",
                 "-o", str(tmp_path), "--pef-name", "train"]) == 0
    assert main(["run", str(tmp_path / "train" / "train.pef"), "--data", str(tmp_path / "batches.hdf5"),
                 "--checkpoint", str(llama_gguf), "--num-steps", "5", "--no-shuffle", "--lr", "1e-3",
                 "--save-dir", str(tmp_path / "run")]) == 0
    with open(tmp_path / "run" / "per_step_metrics.csv", newline="") as handle:
        np.testing.assert_allclose([float(r["loss"]) for r in csv.DictReader(handle)], losses, rtol=1e-4)
    saved = tmp_path / "run" / "checkpoint-5"
    reference = load_file(FIXTURES / "ref" / "llama-tiny" / "params_step5.safetensors")
    tensors = load_file(saved / "model.safetensors")
    assert sorted(tensors) == sorted(reference)
    for name, want in reference.items():
        np.testing.assert_allclose(tensors[name], want, atol=2e-5, err_msg=name)
    config = json.loads((saved / "config.json").read_text())
    original = json.loads((LLAMA / "config.json").read_text())
    same = ("architectures", "model_type", "hidden_size", "num_key_value_heads", "rms_norm_eps", "bos_token_id",
            "eos_token_id", "tie_word_embeddings", "hidden_act")
    assert {k: config[k] for k in same} == {k: original[k] for k in same}
    assert config["rope_theta"] == original["rope_parameters"]["rope_theta"]


def test_the_chat_template_and_its_special_tokens_come_from_the_gguf(tmp_path, hf_tokenizer_json):
    from runtime.chat_template import ChatTemplate

    template = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    path = tokenizer_gguf(tmp_path / "t.gguf", hf_tokenizer_json, "smollm", **{"tokenizer.chat_template": template,
                                                                                "tokenizer.ggml.bos_token_id": 0})
    chat = ChatTemplate.from_folder(path)
    assert chat.special_tokens == {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}
    text = chat.render([{"role": "user", "content": "Hi"}])
    assert text == "<|endoftext|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert load_tokenizer(path).encode(text)[:2] == [0, 1]
    assert ChatTemplate.from_folder(tokenizer_gguf(tmp_path / "none.gguf", hf_tokenizer_json, "smollm")) is None


@pytest.mark.parametrize("name", ["qwen2-tiny", "gemma-tiny"])
def test_qwen2_and_gemma_gguf_files_match_transformers(tmp_path, name):
    """Converted as llama.cpp does (Qwen2: q/k/v biases, no permutation; Gemma: norm weights + 1)."""
    hf = FIXTURES / "hf" / name
    path = llama_to_gguf(hf, tmp_path / f"{name}.gguf")
    want = load_file(hf / "model.safetensors")
    got = hf_tensors(path)
    assert sorted(got) == sorted(want)
    for key, value in want.items():  # Gemma's norms went through + 1 - 1 in float32: within an ulp of 1
        np.testing.assert_allclose(got[key], value, atol=1.2e-7 if name == "gemma-tiny" else 0, rtol=0)
    result = compiled(path, True)
    assert result.config["model_type"] == name.split("-")[0]
    loaded = load_hf_checkpoint(path, {p.name: p.type for p in result.graph.params}, strict=True)
    expected = np.load(FIXTURES / "ref" / name / "expected.npz")
    logits = interpret(result.graph, {"input_ids": expected["input_ids"]}, loaded.tensors).outputs["logits"]
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-4, rtol=0)
