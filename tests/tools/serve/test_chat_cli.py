"""`rduflow run --inference --chat` and `rduflow serve` from the command line."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from serve_helpers import GPT2, ROOT, make_checkpoint, wait_healthy
from tools.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def chat_json(capsys, pef, checkpoint, *options) -> dict:
    code, out, err = run(capsys, "run", pef, "--inference", "--checkpoint", checkpoint, "--chat", "--json",
                         "--max-new-tokens", 12, *options)
    assert code == 0, err
    return json.loads(out)


def test_chat_renders_each_prompt_as_a_user_message(capsys, pef, checkpoint, oracle):
    result = chat_json(capsys, pef, checkpoint, "--prompt", "Hi", "--prompt", "Who?")
    prompts = [oracle.chat_prompt([{"role": "user", "content": p}]) for p in ("Hi", "Who?")]
    assert prompts[0] == "u:Hi<|endoftext|>a:"
    assert result["prompt_ids"] == [oracle.tokenizer.encode(p) for p in prompts]
    assert result["token_ids"] == [oracle.tokens(ids, 12) for ids in result["prompt_ids"]]
    assert result["completions"] == [oracle.tokenizer.decode(t) for t in result["token_ids"]]


def test_system_message_comes_first(capsys, pef, checkpoint, oracle):
    result = chat_json(capsys, pef, checkpoint, "--prompt", "Hi", "--system", "Be brief.")
    assert oracle.tokenizer.decode(result["prompt_ids"][0]) == "s:Be brief.u:Hi" + "a:"  # specials skipped
    assert len(result["prompt_ids"][0]) == 19


def test_stop_strings_cut_the_completion(capsys, pef, checkpoint, oracle):
    full = chat_json(capsys, pef, checkpoint, "--prompt", "Hi", "--max-new-tokens", 30)
    text = full["completions"][0]
    stop = text[6:8]
    result = chat_json(capsys, pef, checkpoint, "--prompt", "Hi", "--max-new-tokens", 30, "--stop", stop,
                       "--stop", "@@never")
    assert result["completions"] == [text[:text.find(stop)]] and result["stop"] == ["stop"]
    ids = result["token_ids"][0]
    assert ids == full["token_ids"][0][:len(ids)] and stop in oracle.tokenizer.decode(ids)
    assert stop not in oracle.tokenizer.decode(ids[:-1])  # generation ended at the token completing the stop


def test_every_declared_eos_id_ends_a_completion(capsys, pef, tmp_path, oracle):
    tokens = oracle.tokens(oracle.tokenizer.encode(oracle.chat_prompt([{"role": "user", "content": "Hi"}])), 12)
    at = next(i for i in range(2, 12) if tokens[i] not in tokens[:i])
    checkpoint = make_checkpoint(tmp_path / "eos", eos_ids=[127, tokens[at]])
    result = chat_json(capsys, pef, checkpoint, "--prompt", "Hi")
    assert result["token_ids"] == [tokens[:at + 1]] and result["stop"] == ["eos"]
    assert result["completions"] == [oracle.tokenizer.decode(tokens[:at + 1])]


@pytest.mark.parametrize("options, message", [
    (["--checkpoint", GPT2, "--chat", "--prompt", "Hi"], f"--chat: {GPT2} has no chat template (chat_template in "
                                                         "tokenizer_config.json, or chat_template.jinja)"),
    (["--chat", "--prompt", "Hi"], "--chat needs --checkpoint DIR (its chat template renders the prompts)"),
    (["--prompt", "Hi", "--system", "x"], "--system needs --chat"),
    (["--checkpoint", "{ckpt}", "--chat", "--prompt-ids", "1"], "--chat renders text prompts: give --prompt, not "
                                                                "--prompt-ids or --prompts-file"),
])
def test_chat_mistakes(capsys, pef, checkpoint, options, message):
    code, _, err = run(capsys, "run", pef, "--inference", *[str(o).format(ckpt=checkpoint) for o in options])
    assert code == 1 and err.strip().endswith(message), err


def test_a_broken_template_is_named_before_anything_runs(capsys, pef, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "broken", template="{% for m in messages %}{{ m.content }}")
    for argv in (["run", pef, "--inference", "--checkpoint", checkpoint, "--chat", "--prompt", "Hi"],
                 ["serve", pef, "--checkpoint", checkpoint]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and err.strip().startswith("error: chat template line 1: Unexpected end of template"), err


def test_serve_checks_the_checkpoint_first(capsys, pef, tmp_path):
    code, _, err = run(capsys, "serve", pef, "--checkpoint", tmp_path)
    assert code == 1 and f"'{tmp_path}' has neither model.safetensors nor model.safetensors.index.json" in err


def test_serve_needs_a_checkpoint(capsys, pef):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(pef)])
    assert exit_.value.code == 2 and "the following arguments are required: --checkpoint" in capsys.readouterr().err


def test_serve_refuses_a_training_pef(capsys, tmp_path, checkpoint):
    assert main(["compile", str(GPT2), "-o", str(tmp_path), "--pef-name", "train"]) == 0
    code, _, err = run(capsys, "serve", tmp_path / "train" / "train.pef", "--checkpoint", checkpoint)
    assert code == 1 and "rduflow serve needs a PEF compiled with 'rduflow compile --inference'" in err


def test_serve_without_the_extra_says_how_to_install_it(capsys, pef, checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    code, _, err = run(capsys, "serve", pef, "--checkpoint", checkpoint)
    assert code == 1
    assert err.strip() == ("error: rduflow serve needs the 'serve' extra (uvicorn is not installed): "
                           "pip install 'rduflow[serve]'")


def test_serve_refuses_an_address_in_use(capsys, pef, checkpoint):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "serve", pef, "--checkpoint", checkpoint, "--port", port)
    assert code == 1 and err.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_rduflow_serve_answers_then_stops_on_sigterm(pef, checkpoint):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "tools.cli", "serve", str(pef), "--checkpoint",
                                str(checkpoint), "--port", "0", "--served-model-name", "cli"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        first = process.stdout.readline()
        match = re.fullmatch(r"Serving cli on http://127\.0\.0\.1:(\d+) \(4 slots, context 64 tokens, "
                             r"a chat template\)\n", first)
        assert match, first
        url = f"http://127.0.0.1:{match[1]}"
        wait_healthy(url, 60)
        body = {"model": "cli", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).json()
        assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == -signal.SIGTERM, err  # uvicorn re-raises the signal after its graceful shutdown
    assert "Finished server process" in err
