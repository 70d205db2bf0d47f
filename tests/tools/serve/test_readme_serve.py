"""The "Chat and serve" section of README.md runs as written.

Its commands run in order in a temporary folder standing in for the repository root, with
`out/gpt2-tiny-finetuned/checkpoint-100` (made by the README's fine-tuning section) replaced by
the tiny checkpoint with the same ASCII tokenizer and no chat template. `rduflow serve ... &`
starts the real command in a subprocess on a free port (the README's 8000 may be taken),
`curl` lines are sent with httpx to that port, and the ```python block runs against it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import httpx

from serve_helpers import GPT2, ROOT, free_port, make_checkpoint, wait_healthy
from tools.cli import main

SECTION = "## Chat and serve (OpenAI API)"
README_URL = "http://127.0.0.1:8000"


def section_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    return re.findall(r"^```(\w*)\n(.*?)^```", text[start:end], re.DOTALL | re.MULTILINE)


def curl(command: str, url: str) -> str:
    """A README curl line (-s, -N, -H, -d) sent with httpx; the response body."""
    words = shlex.split(command.replace(README_URL, url))
    target = next(w for w in words if w.startswith("http"))
    headers = dict(h.split(": ", 1) for h in (words[i + 1] for i, w in enumerate(words) if w == "-H"))
    data = next((words[i + 1] for i, w in enumerate(words) if w == "-d"), None)
    response = httpx.request("POST" if data else "GET", target, headers=headers, content=data, timeout=60)
    assert response.status_code == 200, response.text
    return response.text


def test_readme_chat_and_serve(tmp_path, monkeypatch):
    for path in ("tests/fixtures", "tools/data"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).symlink_to(ROOT / path)
    monkeypatch.chdir(tmp_path)
    make_checkpoint(tmp_path / "out" / "gpt2-tiny-finetuned" / "checkpoint-100", template=None)
    assert main(["compile", str(GPT2), "--inference", "-b", "1", "-o", "out", "--pef-name", "gpt2-tiny-generate"]) == 0
    blocks = section_blocks()
    assert [language for language, _ in blocks] == ["sh", "sh", "python"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = None
    outputs = []
    try:
        for command in (line for _, body in blocks[:2] for line in body.splitlines() if line.strip()):
            if command.startswith("cp "):
                shutil.copy(*shlex.split(command)[1:])
            elif command.startswith("curl "):
                outputs.append(curl(command, url))
            elif command.endswith(" &"):
                words = shlex.split(command.removesuffix(" &"))
                server = subprocess.Popen([sys.executable, "-m", "tools.cli", *words[1:], "--port", str(port)],
                                          env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
                wait_healthy(url, 60)
            else:
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    assert main(shlex.split(command)[1:]) == 0, command
                outputs.append(out.getvalue())
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(blocks[2][1].replace(README_URL, url), {})
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=60)
    chat_cli, models, chat, stream = outputs[0], *outputs[-3:]
    assert chat_cli.startswith("Completion: ")
    assert json.loads(models)["data"][0]["id"] == "lysander"
    assert json.loads(chat)["usage"]["prompt_tokens"] == len("user: Who is Hermia?") + 1 + len("\nassistant: ")
    assert stream.endswith("data: [DONE]\n\n")
    assert re.search(r"CompletionUsage\(completion_tokens=\d+, prompt_tokens=33", printed.getvalue())
