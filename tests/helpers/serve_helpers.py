"""Helpers of the serving tests: a small chat checkpoint, a -b 4 generation PEF, live servers."""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from runtime.chat_template import ChatTemplate
from runtime.generate import ProgramSteps, Prompt, checkpoint_tokenizer, eos_token_ids, generate, load_weights
from runtime.program import load
from runtime.sampling import SamplingOptions
from runtime.serving import Engine
from tools.cli import main
from tools.serve import Model, create_app

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "tests" / "fixtures" / "hf" / "gpt2-tiny"
#: a ChatML-like template, short enough for the tiny model's 64-token context; its eos_token is one special id
CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role[0] }}:{{ m.content }}{{ eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}a:{% endif %}")
MODEL_NAME = "tiny-chat"


def make_checkpoint(folder: Path, eos_ids: list[int] | None = None, template: str | None = CHAT_TEMPLATE) -> Path:
    """gpt2-tiny with the ASCII tokenizer (id 127 is <|endoftext|>) and a chat template."""
    shutil.copytree(GPT2, folder)
    shutil.copy(ROOT / "tools" / "data" / "ascii_tokenizer.json", folder / "tokenizer.json")
    config = {"eos_token": "<|endoftext|>"} | ({"chat_template": template} if template else {})
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if eos_ids is not None:
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}), encoding="utf-8")
    return folder


def compile_pef(out: Path, batch: int = 4) -> Path:
    assert main(["compile", str(GPT2), "--inference", "-b", str(batch), "-o", str(out), "--pef-name", "gen"]) == 0
    return out / "gen" / "gen.pef"


def program_steps(pef: Path, checkpoint: Path) -> ProgramSteps:
    program = load(pef)
    load_weights(program, checkpoint)
    return ProgramSteps(program)


def served_model(pef: Path, checkpoint: Path, max_queued: int = 64, wrap=None) -> Model:
    """The model `rduflow serve` would serve; `wrap(steps)` may wrap the entry points (e.g. slow them)."""
    steps = program_steps(pef, checkpoint)
    tokenizer, _ = checkpoint_tokenizer(checkpoint)
    engine = Engine(wrap(steps) if wrap else steps, max_queued=max_queued)
    eos = frozenset(eos_token_ids(checkpoint, tokenizer, steps.limits.vocab))
    return Model(MODEL_NAME, tokenizer, ChatTemplate.from_folder(checkpoint), eos, engine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(model: Model, timeout: float = 30.0):
    """uvicorn serving `model` on a free loopback port in a thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)


def wait_healthy(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no server at {url} after {timeout} s")
        time.sleep(0.05)


class Oracle:
    """What a request gives when it runs alone, through `runtime.generate.generate` on its own program."""

    def __init__(self, pef: Path, checkpoint: Path):
        self.steps = program_steps(pef, checkpoint)
        self.tokenizer, _ = checkpoint_tokenizer(checkpoint)
        self.eos = eos_token_ids(checkpoint, self.tokenizer, self.steps.limits.vocab)
        self.template = ChatTemplate.from_folder(checkpoint)

    def tokens(self, prompt: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0) -> list[int]:
        sampling = SamplingOptions(temperature=temperature, top_p=top_p, seed=seed)
        result = generate(self.steps, [Prompt(tuple(prompt), "oracle")], max_tokens, sampling, self.eos)
        return list(result.completions[0].token_ids)

    def text(self, prompt: str, max_tokens: int, **sampling) -> str:
        return self.tokenizer.decode(self.tokens(self.tokenizer.encode(prompt), max_tokens, **sampling))

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.template.render(messages)
