"""Text generation with a generation PEF: prefill the prompts into the KV caches, then decode.

A model with `cache` declarations compiled for inference has the entry points
`prefill` (inputs `input_ids` [B, P], `positions` [B] — where each sequence's
tokens start — and `lengths` [B] — how many of the P are real; output `logits`
[B, vocab] of each sequence's last real token) and `decode` (`input_ids` [B, 1],
`positions` [B]; `logits` [B, vocab]). Both write the caches in place, and the
caches hold `max_seq_length` positions (a compile option in the PEF header).

`generate` runs a list of prompts in batches of B: prompts longer than P are
prefilled in chunks of P; rows with nothing to compute (a prompt that ended in
an earlier chunk, a stopped sequence, an unused row of the batch) get position
`max_seq_length`, so their cache writes fall outside the cache and are dropped. Each sequence
stops at an EOS id (kept as its last token, as Hugging Face does), when a
caller's `until` says so (a stop string), after `max_new_tokens`, or when its
cache is full. `runtime.serving` schedules requests on the same rows
continuously (`prefill_rows`, `decode_rows`). Sampling (`runtime.sampling`)
happens on the host between steps: sampling options are run-time choices.

`ProgramSteps` runs the entry points of a loaded PEF; the tests' `InterpretedSteps` runs
the same prefill and decode graphs with the reference interpreter (the oracle
of the tests).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Collection, Mapping, Protocol, Sequence

import attrs
import numpy as np

from backend.pef.file import PEF
from ir import jsontext
from ir.errors import CheckpointError, DataError, ExecutionError
from ir.dtypes import DType
from ir.types import TensorType
from runtime import checkpoint as ckpt
from runtime.gguf_model import is_gguf
from runtime.gguf_tokenizer import has_tokenizer
from runtime.program import Program, param_types
from runtime.sampling import Sampler, SamplingOptions
from runtime.tokenizer import MERGES_FILE, TOKENIZER_FILE, VOCAB_FILE, ByteTokenizer, Tokenizer, load_tokenizer

#: the entry points a generation PEF has
PREFILL, DECODE = "prefill", "decode"


@attrs.frozen
class Limits:
    """The static shapes generation works within: batch B, prefill chunk P, cache length, vocabulary."""

    batch: int
    chunk: int
    max_seq_length: int
    vocab: int


@attrs.frozen
class Prompt:
    """Token ids and where they came from (for error messages)."""

    ids: tuple[int, ...]
    source: str


@attrs.frozen
class Completion:
    """The new tokens of one prompt and why generation stopped: eos, max_new_tokens or max_seq_length."""

    prompt: Prompt
    token_ids: tuple[int, ...]
    stop: str


@attrs.frozen
class Generation:
    """Every completion, in prompt order, and the timing.

    `ttft_s`: seconds from the start to the first tokens (prefill and the first draw);
    `tokens_per_s`: tokens generated after the first ones per second of decoding
    (with no decoding: all tokens over the whole time)."""

    completions: tuple[Completion, ...]
    ttft_s: float
    tokens_per_s: float
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)


class Steps(Protocol):
    """One call of each entry point; state (the KV caches) persists between calls."""

    limits: Limits

    def prefill(self, input_ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...

    def decode(self, input_ids: np.ndarray, positions: np.ndarray) -> np.ndarray: ...


def limits_of(prefill: Mapping[str, TensorType], logits: TensorType, max_seq_length: int) -> Limits:
    """The limits from the prefill inputs' types and the logits' type."""
    batch, chunk = prefill["input_ids"].shape
    return Limits(batch, chunk, max_seq_length, logits.shape[-1])


def pef_limits(pef: PEF) -> Limits:
    """The generation limits of a PEF; ExecutionError if it has no generation entry points."""
    missing = [name for name in (PREFILL, DECODE) if name not in pef.entry_names]
    if missing:
        raise ExecutionError("this PEF has no generation entry points (prefill and decode): compile a model "
                             "with a KV cache (gpt2, llama, or an RDL model declaring 'cache') with --inference")
    options = {o.name: o.value for o in pef.header.options}
    if not isinstance(options.get("max_seq_length"), int):
        raise ExecutionError("the PEF does not record the cache length (config field 'max_seq_length')")
    prefill = pef.entry(PREFILL).symbols
    types = {s.name: TensorType(s.shape, DType(s.dtype)) for s in (*prefill.inputs, *prefill.outputs)}
    if "input_ids" not in types or types["input_ids"].rank != 2 or "logits" not in types:
        raise ExecutionError("the PEF's prefill entry point lacks input_ids [B, P] or logits [B, vocab]")
    return limits_of(types, types["logits"], options["max_seq_length"])


class ProgramSteps:
    """The prefill and decode entry points of a loaded generation PEF (`profile`: each records
    host time per kernel in its `Program.profile`)."""

    def __init__(self, program: Program, profile: bool = False):
        self.limits = pef_limits(program.pef)
        self.program = program
        self.programs = {name: program.entry(name) for name in (PREFILL, DECODE)}
        self.profile = profile

    def prefill(self, input_ids, positions, lengths):
        inputs = {"input_ids": input_ids, "positions": positions, "lengths": lengths}
        return self.programs[PREFILL].run(inputs, profile=self.profile)["logits"]

    def decode(self, input_ids, positions):
        inputs = {"input_ids": input_ids, "positions": positions}
        return self.programs[DECODE].run(inputs, profile=self.profile)["logits"]


# --- the loop ----------------------------------------------------------------------------
def check_request(prompts: Sequence[Prompt], max_new_tokens: int, limits: Limits) -> None:
    """ExecutionError naming the first prompt that is empty, too long, or has an unknown token,
    or a `max_new_tokens` below 1 (cheap: callers check before loading a program)."""
    if not prompts:
        raise ExecutionError("no prompts: give --prompt, --prompt-ids or --prompts-file")
    for prompt in prompts:
        if not prompt.ids:
            raise ExecutionError(f"{prompt.source}: the prompt is empty")
        if len(prompt.ids) > limits.max_seq_length:
            raise ExecutionError(f"{prompt.source}: the prompt has {len(prompt.ids)} tokens, more than the "
                                 f"{limits.max_seq_length} the PEF was compiled for (max_seq_length)")
        bad = next((t for t in prompt.ids if not 0 <= t < limits.vocab), None)
        if bad is not None:
            raise ExecutionError(f"{prompt.source}: token id {bad} is outside the model's vocabulary "
                                 f"(0..{limits.vocab - 1})")
    if max_new_tokens < 1:
        raise ExecutionError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")


@attrs.define
class _Row:
    """One sequence of a batch while it generates."""

    prompt: Prompt
    tokens: list[int] = attrs.field(factory=list)
    stop: str | None = None

    @property
    def length(self) -> int:
        return len(self.prompt.ids) + len(self.tokens)


def generate(steps: Steps, prompts: Sequence[Prompt], max_new_tokens: int, sampling: SamplingOptions,
             eos_id: int | Collection[int] | None = None,
             until: Callable[[Sequence[int]], bool] | None = None) -> Generation:
    """Complete every prompt (see the module docstring); `eos_id` may be several ids, and
    `until(tokens)`, when given, stops a completion as soon as it returns True (reason "stop")."""
    limits = steps.limits
    check_request(prompts, max_new_tokens, limits)
    eos_ids = frozenset([eos_id] if isinstance(eos_id, int) else eos_id or ())
    sampler = Sampler(sampling)
    start = time.perf_counter()
    first: float | None = None
    decoding, decoded = 0.0, 0
    completions: list[Completion] = []
    for at in range(0, len(prompts), limits.batch):
        rows = [_Row(p) for p in prompts[at:at + limits.batch]]
        logits = prefill_rows(steps, {b: row.prompt.ids for b, row in enumerate(rows)})
        for b, row in enumerate(rows):
            _accept(row, sampler.next_token(logits[b], row.prompt.ids), max_new_tokens, eos_ids, until)
        first = first if first is not None else time.perf_counter() - start
        begin = time.perf_counter()
        decoded += _decode(steps, rows, sampler, max_new_tokens, eos_ids, until)
        decoding += time.perf_counter() - begin
        completions += [Completion(r.prompt, tuple(r.tokens), r.stop) for r in rows]
    seconds = time.perf_counter() - start
    total = sum(len(c.token_ids) for c in completions)
    rate = decoded / decoding if decoded and decoding > 0 else total / seconds
    return Generation(tuple(completions), first, rate, seconds)


def prefill_rows(steps: Steps, prompts: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
    """The prompts of some batch rows (row -> ids) into the caches from position 0, chunk by chunk;
    each row's logits after its last token. The other rows compute nothing."""
    limits = steps.limits
    chunk, batch = limits.chunk, limits.batch
    last: dict[int, np.ndarray] = {}
    longest = max(len(ids) for ids in prompts.values())
    for start in range(0, longest, chunk):
        ids = np.zeros((batch, chunk), np.int32)
        positions = np.full(batch, limits.max_seq_length, np.int32)
        lengths = np.ones(batch, np.int32)
        for b, prompt in prompts.items():
            part = prompt[start:start + chunk]
            if part:
                ids[b, :len(part)] = part
                positions[b], lengths[b] = start, len(part)
        logits = steps.prefill(ids, positions, lengths)
        for b, prompt in prompts.items():
            if start < len(prompt) <= start + chunk:
                last[b] = logits[b].copy()
    return last


def decode_rows(steps: Steps, tokens: Mapping[int, tuple[int, int]]) -> np.ndarray:
    """One decode step for some batch rows (row -> (last token, its position)); the logits [B, vocab].
    The other rows compute nothing."""
    limits = steps.limits
    ids = np.zeros((limits.batch, 1), np.int32)
    positions = np.full(limits.batch, limits.max_seq_length, np.int32)
    for b, (token, position) in tokens.items():
        ids[b, 0], positions[b] = token, position
    return steps.decode(ids, positions)


def _decode(steps: Steps, rows: list[_Row], sampler: Sampler, max_new_tokens: int, eos_ids: frozenset[int],
            until: Callable[[Sequence[int]], bool] | None) -> int:
    """Decode until every row stops; the number of tokens generated."""
    limits = steps.limits
    count = 0
    while True:
        for row in rows:
            if row.stop is None and row.length > limits.max_seq_length:
                row.stop = "max_seq_length"  # no cache position left for the last token
        active = [b for b, row in enumerate(rows) if row.stop is None]
        if not active:
            return count
        logits = decode_rows(steps, {b: (rows[b].tokens[-1], rows[b].length - 1) for b in active})
        for b in active:
            row = rows[b]
            token = sampler.next_token(logits[b], (*row.prompt.ids, *row.tokens))
            _accept(row, token, max_new_tokens, eos_ids, until)
            count += 1


def _accept(row: _Row, token: int, max_new_tokens: int, eos_ids: frozenset[int],
            until: Callable[[Sequence[int]], bool] | None) -> None:
    row.tokens.append(token)
    if token in eos_ids:
        row.stop = "eos"
    elif until is not None and until(row.tokens):
        row.stop = "stop"
    elif len(row.tokens) >= max_new_tokens:
        row.stop = "max_new_tokens"


# --- prompts, tokenizer, weights ------------------------------------------------------------
def text_prompts(texts: Sequence[str], tokenizer: Tokenizer) -> list[Prompt]:
    """Prompts from text (`--prompt TEXT`), tokenized."""
    return [Prompt(tuple(tokenizer.encode(t)), f"--prompt {i + 1}") for i, t in enumerate(texts)]


def id_prompts(lists: Sequence[str]) -> list[Prompt]:
    """Prompts from comma-separated token ids (`--prompt-ids 1,2,3`)."""
    out = []
    for i, text in enumerate(lists):
        source = f"--prompt-ids {i + 1}"
        try:
            ids = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise ExecutionError(f"{source}: expected comma-separated integers, got '{text}'") from None
        out.append(Prompt(ids, source))
    return out


def file_prompts(path: Path, tokenizer: Tokenizer) -> list[Prompt]:
    """Prompts of a JSON-lines file: each line a string, or an object with "prompt" (text) or
    "prompt_ids" (token ids); blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read prompts file {path}: {getattr(err, 'strerror', None) or err}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        try:
            item = jsontext.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{source}:{err.colno}: not valid JSON ({err.msg})") from None
        out.append(_file_prompt(item, source, tokenizer))
    return out


def _file_prompt(item, source: str, tokenizer: Tokenizer) -> Prompt:
    if isinstance(item, dict) and isinstance(item.get("prompt_ids"), list) \
            and all(type(t) is int for t in item["prompt_ids"]):
        return Prompt(tuple(item["prompt_ids"]), source)
    text = item.get("prompt") if isinstance(item, dict) else item
    if not isinstance(text, str):
        raise DataError(f"{source}: expected a string, or an object with \"prompt\" (a string) or "
                        "\"prompt_ids\" (a list of integers)")
    return Prompt(tuple(tokenizer.encode(text)), source)


def checkpoint_tokenizer(checkpoint: Path | None) -> tuple[Tokenizer, str]:
    """The checkpoint folder's tokenizer (its tokenizer.json, or GPT-2's vocab.json + merges.txt),
    or a GGUF file's, and the file it came from; else the built-in byte-level tokenizer ("byte")."""
    if checkpoint is not None:
        if is_gguf(checkpoint) and checkpoint.is_file() and has_tokenizer(checkpoint):
            return load_tokenizer(checkpoint), str(checkpoint)
        if (checkpoint / TOKENIZER_FILE).is_file():
            return load_tokenizer(checkpoint / TOKENIZER_FILE), str(checkpoint / TOKENIZER_FILE)
        if (checkpoint / VOCAB_FILE).is_file() and (checkpoint / MERGES_FILE).is_file():
            return load_tokenizer(checkpoint), str(checkpoint / VOCAB_FILE)
    return ByteTokenizer(), "byte"


def eos_token_ids(checkpoint: Path | None, tokenizer: Tokenizer, vocab: int) -> tuple[int, ...]:
    """Every EOS id the checkpoint declares (`eos_token_id`, one id or a list, in its
    generation_config.json and config.json), else the tokenizer's (when the model's vocabulary has it)."""
    ids: list[int] = []
    for name in ("generation_config.json", ckpt.CONFIG):
        path = checkpoint / name if checkpoint is not None else None
        if path is not None and path.is_file():
            try:
                value = jsontext.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            except (OSError, ValueError, AttributeError) as err:
                raise CheckpointError(f"{path}: unreadable ({err})") from None
            ids += [v for v in (value if isinstance(value, list) else [value]) if type(v) is int]
    if not ids and 0 <= tokenizer.eos_id < vocab:
        ids.append(tokenizer.eos_id)
    return tuple(dict.fromkeys(ids))


def load_weights(program: Program, checkpoint: Path) -> tuple[str, ...]:
    """Set the program's params (not its state: caches, optimizer moments) from a checkpoint
    folder; the names of checkpoint tensors the model does not use."""
    loaded = ckpt.load_hf_checkpoint(checkpoint, param_types(program.pef, ("param", "buffer")))
    program.params.update(loaded.tensors)
    return loaded.unexpected

