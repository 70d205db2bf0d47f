"""`rduflow run PEF --inference`: text generation with a generation PEF (see `runtime.generate`).

Prompts come from `--prompt` (text, tokenized with the checkpoint's tokenizer or the
built-in byte-level one; with `--chat`, first rendered as a user message by the
checkpoint's chat template), `--prompt-ids 1,2,3` and `--prompts-file FILE.jsonl`, in
that order. A completion ends at any EOS id the checkpoint declares or at a `--stop`
string. Each completion prints as `Completion: ...`, then the time to first token and
tokens per second; `--json` prints one JSON object instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from backend.pef.file import PEF
from backend.pef.targets import load_target
from ir.errors import ConfigError, RduflowError
from runtime.chat_template import ChatTemplate
from runtime.cost_model import estimate
from runtime.generate import (DECODE, PREFILL, Generation, ProgramSteps, Prompt, check_request, checkpoint_tokenizer,
                              eos_token_ids, file_prompts, generate, id_prompts, load_weights, pef_limits,
                              text_prompts)
from runtime.profile import print_profile, table_console, write_trace
from runtime.program import load
from runtime.sampling import SamplingOptions
from runtime.text_stream import cut_at_stop, decode, first_stop
from runtime.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer


def add_inference_options(group: argparse._ArgumentGroup) -> list[argparse.Action]:
    """The generation options; returns their actions but --inference's (a training run refuses them)."""
    group.add_argument("--inference", action="store_true",
                       help="optional: the PEF's mode decides what a run does; this only checks that the PEF "
                            "was compiled with --inference")
    add = group.add_argument
    return [
        add("--prompt", action="append", default=[], metavar="TEXT",
            help="a prompt, tokenized with the checkpoint's tokenizer.json (else byte-level); repeatable"),
        add("--prompt-ids", action="append", default=[], metavar="1,2,3",
            help="a prompt as comma-separated token ids; repeatable"),
        add("--prompts-file", type=Path, metavar="FILE.jsonl",
            help='prompts, one JSON per line: "text", {"prompt": "text"} or {"prompt_ids": [1, 2]}'),
        add("--max-new-tokens", type=int, default=32, metavar="N",
            help="stop a completion after N new tokens (default: 32)"),
        add("--temperature", type=float, default=0.0, metavar="T",
            help="sampling temperature; 0 is greedy (default: 0)"),
        add("--top-k", type=int, default=0, metavar="K",
            help="sample among the K most likely tokens (default: 0, all)"),
        add("--top-p", type=float, default=1.0, metavar="P",
            help="sample among the most likely tokens holding probability P (default: 1, all)"),
        add("--repetition-penalty", type=float, default=1.0, metavar="R",
            help="penalize tokens already in the sequence, as Hugging Face does (default: 1, off)"),
        add("--chat", action="store_true",
            help="render each --prompt as a user message with the checkpoint's chat template"),
        add("--system", metavar="TEXT", help="with --chat: a system message before each prompt"),
        add("--stop", action="append", default=[], metavar="TEXT",
            help="end a completion where this text appears (not included); repeatable"),
        add("--json", action="store_true",
            help="print one JSON object: completions, token_ids, ttft_s, tokens_per_s, ..."),
    ]


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def run_inference(args: argparse.Namespace, pef: PEF) -> int:
    """Generate for every prompt; profile the entry points with --profile / --trace.

    Options, prompts and the PEF's limits are checked before the kernels are compiled
    and the weights loaded, so a mistake costs no wait."""
    sampling = SamplingOptions.parse(_flag, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                     repetition_penalty=args.repetition_penalty, seed=args.seed)
    if sampling.greedy and (args.top_k or args.top_p < 1.0):
        print("warning: --top-k and --top-p have no effect with --temperature 0 (greedy)", file=sys.stderr)
    tokenizer, source = checkpoint_tokenizer(args.checkpoint)
    if args.system is not None and not args.chat:
        raise ConfigError("--system needs --chat")
    texts = _chat_prompts(args) if args.chat else args.prompt
    prompts = text_prompts(texts, tokenizer) + id_prompts(args.prompt_ids)
    if args.prompts_file is not None:
        prompts += file_prompts(args.prompts_file, tokenizer)
    limits = pef_limits(pef)
    if source == "byte" and not _declares_bytes(args.checkpoint):
        _check_byte_prompts(args.checkpoint, [p for p in prompts if p.source.startswith("--prompt ")], limits.vocab)
    check_request(prompts, args.max_new_tokens, limits)
    target = load_target(args.target) if args.target else None
    profiling = args.profile or args.trace is not None
    start = time.perf_counter()
    program = load(pef, seed=args.seed, threads=args.threads)
    steps = ProgramSteps(program, profile=profiling)
    if args.checkpoint is not None:
        unused = load_weights(program, args.checkpoint)
        if unused:
            print(f"warning: checkpoint {args.checkpoint}: {len(unused)} tensor(s) the model does not use",
                  file=sys.stderr)
    elif not args.json:
        print("warning: no --checkpoint: the weights are the PEF's initializers", file=sys.stderr)
    until = (lambda tokens: first_stop(decode(tokenizer, tokens), args.stop) is not None) if args.stop else None
    eos = eos_token_ids(args.checkpoint, tokenizer, steps.limits.vocab)
    load_s = time.perf_counter() - start
    result = generate(steps, prompts, args.max_new_tokens, sampling, eos, until)
    _report(args, result, tokenizer, source, load_s)
    if profiling:
        _profile(args, pef, steps, target)
    return 0


def _declares_bytes(checkpoint: Path | None) -> bool:
    """Whether the checkpoint's own tokenizer is the byte-level one (its tokenizer_config.json says so)."""
    try:
        return checkpoint is not None and isinstance(load_tokenizer(checkpoint), ByteTokenizer)
    except RduflowError:
        return False


def _check_byte_prompts(checkpoint: Path | None, prompts: list[Prompt], vocab: int) -> None:
    """Text read as UTF-8 bytes for want of a tokenizer: ConfigError saying so when a byte is outside
    the vocabulary, else a warning."""
    whose = f"checkpoint {checkpoint} has no tokenizer" if checkpoint is not None else "there is no --checkpoint"
    instead = ("pass --prompt-ids (token ids), or a --checkpoint with a tokenizer (tokenizer.json, or vocab.json + "
               "merges.txt: one saved by 'rduflow run' has its data folder's)")
    for prompt in prompts:
        bad = next((t for t in prompt.ids if t >= vocab), None)
        if bad is not None:
            raise ConfigError(f"{prompt.source}: {whose}, so the text was read as UTF-8 bytes, and byte {bad} is "
                              f"outside the model's vocabulary (0..{vocab - 1}); {instead}")
    if prompts and checkpoint is not None:
        print(f"warning: {whose}: --prompt is read as UTF-8 bytes (ids 0-255); if the model was trained with "
              f"another tokenizer, {instead}", file=sys.stderr)


def _chat_prompts(args: argparse.Namespace) -> list[str]:
    """Each --prompt as a user message (after --system, if given) rendered by the checkpoint's chat template."""
    if args.checkpoint is None:
        raise ConfigError("--chat needs --checkpoint DIR (its chat template renders the prompts)")
    if args.prompt_ids or args.prompts_file is not None:
        raise ConfigError("--chat renders text prompts: give --prompt, not --prompt-ids or --prompts-file")
    template = ChatTemplate.from_folder(args.checkpoint)
    if template is None:
        raise ConfigError(f"--chat: {args.checkpoint} has no chat template (chat_template in "
                          "tokenizer_config.json, or chat_template.jinja)")
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    return [template.render(system + [{"role": "user", "content": p}]) for p in args.prompt]


def _printable(text: str) -> str:
    """Control characters other than newline and tab as \\xNN escapes."""
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in text)


def _report(args: argparse.Namespace, result: Generation, tokenizer: Tokenizer, source: str, load_s: float) -> None:
    """The completions, then the time to first token (and the wait before it: kernels compiled, weights loaded)."""
    texts = [cut_at_stop(decode(tokenizer, c.token_ids), args.stop) for c in result.completions]
    if args.json:
        print(json.dumps({"completions": texts, "token_ids": [list(c.token_ids) for c in result.completions],
                          "prompt_ids": [list(c.prompt.ids) for c in result.completions],
                          "stop": [c.stop for c in result.completions], "ttft_s": result.ttft_s,
                          "tokens_per_s": result.tokens_per_s, "load_s": load_s, "tokenizer": source}))
        return
    for completion, text in zip(result.completions, texts):
        print(f"Completion: {_printable(text)}")
        if completion.stop == "max_seq_length":
            print(f"warning: {completion.prompt.source}: stopped at the PEF's maximum length "
                  "(max_seq_length) before --max-new-tokens", file=sys.stderr)
    print(f"time to first token {result.ttft_s:.4f} s (prefill and first draw; before it, compiling the kernels "
          f"and loading the weights took {load_s:.2f} s: a user waited {load_s + result.ttft_s:.2f} s)")
    print(f"tokens/second {result.tokens_per_s:.1f}")


def _profile(args: argparse.Namespace, pef: PEF, steps: ProgramSteps, target) -> None:
    """Host vs modeled RDU time of each entry point; the trace shows the decode step."""
    console = table_console(stderr=args.json)  # keep stdout one JSON object
    for name in (PREFILL, DECODE):
        console.print(f"--- {name} ---")
        print_profile(steps.programs[name].profile, estimate(pef.entry(name), target), console,
                      profile_top(args))
    if args.trace is not None:
        write_trace(args.trace, steps.programs[DECODE].profile, estimate(pef.entry(DECODE), target))
        console.print(f"Trace written to {args.trace} (the decode step)")


def profile_top(args: argparse.Namespace) -> int | None:
    """How many kernels --profile lists: --profile-top, all for 0 or --json."""
    return None if args.profile_top == 0 or args.json else args.profile_top


def check_mode(args: argparse.Namespace, pef: PEF) -> None:
    """ConfigError when --inference is given for a training PEF."""
    if getattr(args, "inference", False) and pef.header.mode != "inference":
        raise ConfigError(f"{args.pef}: --inference needs a PEF compiled with 'rduflow compile --inference'; "
                          f"this one is a {pef.header.mode} PEF")
