"""`rduflow run PEF --inference`: prompts, output, sampling without recompiling, user errors."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from generate_helpers import checkpoint, reference_tokens
from runtime.tokenizer import load_tokenizer
from tools.cli import main

ROOT = Path(__file__).resolve().parents[3]
GPT2 = checkpoint("gpt2-tiny")
PROMPTS = ["30,86,11,27", "18,111,10,21,23,116,46"]  # the fixture's first two prompts


@pytest.fixture(scope="module")
def pef(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pef")
    assert main(["compile", str(GPT2), "--inference", "-b", "2", "-o", str(out), "--pef-name", "gen"]) == 0
    return out / "gen" / "gen.pef"


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["run", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def generate_json(capsys, pef: Path, *options) -> dict:
    argv = [pef, "--inference", "--checkpoint", GPT2, "--max-new-tokens", 12, "--json"]
    for ids in PROMPTS:
        argv += ["--prompt-ids", ids]
    code, out, err = run(capsys, *argv, *options)
    assert code == 0, err
    return json.loads(out)


def test_greedy_json_equals_transformers(capsys, pef):
    result = generate_json(capsys, pef, "--temperature", 0)
    assert result["token_ids"] == [list(t) for t in reference_tokens("gpt2-tiny")[:2]]
    assert result["prompt_ids"] == [[int(i) for i in p.split(",")] for p in PROMPTS]
    assert result["stop"] == ["max_new_tokens"] * 2 and result["tokenizer"] == "byte"
    assert [len(text) for text in result["completions"]] == [12, 12]  # byte tokenizer: one character per id
    assert result["ttft_s"] > 0 and result["tokens_per_s"] > 0


def test_text_output(capsys, pef):
    code, out, err = run(capsys, pef, "--inference", "--checkpoint", GPT2, "--prompt-ids", PROMPTS[0],
                         "--max-new-tokens", 12)
    assert code == 0, err
    # ids 92 87 10 10 10 112 10 6 50 21 105 6 as bytes: newlines kept, other control characters escaped
    assert out.startswith("Completion: \\W\n\n\np\n\\x062\\x15i\\x06\n")
    lines = out.splitlines()
    assert re.fullmatch(r"time to first token \d+\.\d{4} s \(prefill and first draw; before it, compiling the kernels "
                        r"and loading the weights took \d+\.\d\d s: a user waited \d+\.\d\d s\)", lines[-2])
    assert re.fullmatch(r"tokens/second \d+\.\d", lines[-1])


def test_sampling_options_change_without_a_recompile(capsys, pef):
    before = pef.read_bytes()
    greedy = generate_json(capsys, pef, "--temperature", 0)["token_ids"]
    assert generate_json(capsys, pef, "--temperature", 1.5, "--top-k", 1, "--seed", 3)["token_ids"] == greedy
    sampled = generate_json(capsys, pef, "--temperature", 1.0, "--seed", 5)["token_ids"]
    assert generate_json(capsys, pef, "--temperature", 1.0, "--seed", 5)["token_ids"] == sampled
    assert generate_json(capsys, pef, "--temperature", 1.0, "--seed", 6)["token_ids"] != sampled
    assert sampled != greedy
    nucleus = generate_json(capsys, pef, "--temperature", 0.7, "--top-p", 0.9, "--repetition-penalty", 1.3)
    assert all(len(ids) == 12 for ids in nucleus["token_ids"])
    assert pef.read_bytes() == before


def test_text_prompts_use_the_checkpoint_tokenizer(capsys, pef, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(GPT2, folder)
    shutil.copy(ROOT / "tools" / "data" / "ascii_tokenizer.json", folder / "tokenizer.json")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"Hermia"\n\n{"prompt": "Puck"}\n{"prompt_ids": [1, 2, 3]}\n')
    code, out, err = run(capsys, pef, "--inference", "--checkpoint", folder, "--prompt", "LYSANDER",
                         "--prompts-file", prompts, "--max-new-tokens", 4, "--json")
    assert code == 0, err
    result = json.loads(out)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    assert result["tokenizer"] == str(folder / "tokenizer.json")
    assert result["prompt_ids"] == [tokenizer.encode(t) for t in ("LYSANDER", "Hermia", "Puck")] + [[1, 2, 3]]
    assert [tokenizer.decode(ids) for ids in result["token_ids"]] == result["completions"]


@pytest.mark.parametrize("options, message", [
    (["--prompt-ids", ",".join(["5"] * 65)], "--prompt-ids 1: the prompt has 65 tokens, more than the 64 the PEF "
                                              "was compiled for (max_seq_length)"),
    (["--prompt-ids", "1,2,200"], "--prompt-ids 1: token id 200 is outside the model's vocabulary (0..127)"),
    (["--prompt-ids", "1,x"], "--prompt-ids 1: expected comma-separated integers, got '1,x'"),
    (["--prompt-ids", ""], "--prompt-ids 1: the prompt is empty"),
    ([], "no prompts: give --prompt, --prompt-ids or --prompts-file"),
    (["--prompt-ids", "1", "--top-p", "0"], "--top-p: input should be greater than 0 (got 0.0)"),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
])
def test_user_errors(capsys, pef, options, message):
    code, out, err = run(capsys, pef, "--inference", *options)
    assert code == 1 and "Traceback" not in err
    assert err.strip().endswith(message), err


@pytest.mark.parametrize("options, message", [
    (["--prompt-ids", ""], "--prompt-ids 1: the prompt is empty"),
    ([], "no prompts: give --prompt, --prompt-ids or --prompts-file"),
    (["--prompt-ids", "1,2,200"], "--prompt-ids 1: token id 200 is outside the model's vocabulary (0..127)"),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["--prompts-file", "{tmp}/none.jsonl"], "cannot read prompts file {tmp}/none.jsonl: No such file or directory"),
    (["--prompt-ids", "1", "--trace", "{tmp}/none/t.json"], "--trace {tmp}/none/t.json: folder {tmp}/none does not "
                                                             "exist"),
    (["--prompt-ids", "1", "--checkpoint", "{tmp}"], "'{tmp}' has neither model.safetensors nor "
                                                     "model.safetensors.index.json"),
])
def test_mistakes_are_found_before_the_kernels_are_compiled(capsys, pef, tmp_path, monkeypatch, options, message):
    def no_load(*_, **__):
        raise AssertionError("the program was loaded before the mistake was found")

    monkeypatch.setattr("tools.generation.load", no_load)
    code, _, err = run(capsys, pef, "--inference", *[o.format(tmp=tmp_path) for o in options])
    assert code == 1 and "Traceback" not in err
    assert err.strip().endswith(message.format(tmp=tmp_path)), err


def test_a_bad_prompts_file_line_is_named(capsys, pef, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('"fine"\n{"prompt": 3}\n')
    code, _, err = run(capsys, pef, "--inference", "--prompts-file", prompts)
    assert code == 1 and f"{prompts}:2: expected a string, or an object with \"prompt\"" in err


def test_pefs_without_generation_entries_are_refused(capsys, tmp_path):
    assert main(["compile", "mlp", "--inference", "-o", str(tmp_path), "--pef-name", "mlp"]) == 0
    code, _, err = run(capsys, tmp_path / "mlp" / "mlp.pef", "--inference", "--prompt-ids", "1")
    assert code == 1 and "this PEF has no generation entry points (prefill and decode)" in err
    assert main(["compile", "mlp", "-o", str(tmp_path), "--pef-name", "train"]) == 0
    code, _, err = run(capsys, tmp_path / "train" / "train.pef", "--inference", "--prompt-ids", "1")
    assert code == 1 and "--inference needs a PEF compiled with 'rduflow compile --inference'; this one is a " \
                         "train PEF" in err


def test_pef_info_lists_the_entry_points(capsys, pef):
    capsys.readouterr()
    assert main(["pef", "info", str(pef), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format_version"] == 2
    assert [(e["name"], [s["shape"] for s in e["inputs"]]) for e in data["entries"]] == [
        ("prefill", [[2, 16], [2], [2]]), ("decode", [[2, 1], [2]])]
    assert main(["pef", "info", str(pef)]) == 0
    assert "entry    decode: " in capsys.readouterr().out


def test_compile_emits_an_entry_point_graph(capsys):
    from ir.parser import parse
    from ir.printer import print_graph

    capsys.readouterr()
    assert main(["compile", "gpt2", "model.n_layer=1", "--inference", "--emit", "ir", "--entry", "decode"]) == 0
    text = capsys.readouterr().out
    assert "input %input_ids : i32[2,1]" in text
    assert "state @transformer.h.0.attn.k_cache : f32[2,4,64,8] = zeros" in text
    assert "= dynamic_update_slice(@transformer.h.0.attn.k_cache, " in text
    assert "update @transformer.h.0.attn.v_cache = " in text
    assert print_graph(parse(text)) == text
    assert main(["compile", "mlp", "--inference", "--emit", "ir", "--entry", "decode"]) == 1
    assert main(["compile", "gpt2", "--entry", "decode"]) == 1
    assert "--entry needs --emit and --inference" in capsys.readouterr().err
