"""`rduflow serve PEF --checkpoint DIR`: an OpenAI-compatible server with continuous batching.

The PEF's batch rows are the slots requests share (`runtime.serving`); the HTTP side is
`tools.serve` (starlette, uvicorn, prometheus-client: the `serve` extra). SIGTERM or
Ctrl-C stops taking connections and lets the requests in flight finish, for at most
`--shutdown-timeout` seconds.
"""
from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from backend.pef.file import read_pef
from ir.errors import ConfigError
from runtime.chat_template import ChatTemplate
from runtime.checkpoint import weight_files
from runtime.generate import ProgramSteps, checkpoint_tokenizer, eos_token_ids, load_weights, pef_limits
from runtime.program import load
from runtime.serving import Engine
from tools import arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        description="Serve an inference PEF of a model with a KV cache over HTTP, as the OpenAI API: "
                    "GET /v1/models, POST /v1/completions, POST /v1/chat/completions (the checkpoint's chat "
                    "template), GET /health, GET /metrics (Prometheus). The PEF's batch rows (-b at compile "
                    "time) are slots shared by the requests; the others wait in a bounded queue.")
    parser.add_argument("pef", type=Path, metavar="PEF", help="an inference PEF (rduflow compile --inference)")
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="DIR",
                        help="the weights, tokenizer and chat template: a Hugging Face checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=arguments.non_negative_int, default=8000,
                        help="port (default: 8000; 0 picks a free one, printed at start)")
    parser.add_argument("--served-model-name", metavar="NAME",
                        help="the model name clients give (default: the checkpoint folder's name)")
    parser.add_argument("--max-queued", type=arguments.positive_int, default=64, metavar="N",
                        help="requests that may wait for a slot; more are refused with 429 (default: 64)")
    parser.add_argument("--shutdown-timeout", type=arguments.positive_int, default=30, metavar="S",
                        help="on SIGTERM, seconds the requests in flight get to finish (default: 30)")
    parser.add_argument("--threads", type=arguments.positive_int, metavar="N",
                        help=arguments.debug_help("host threads for the kernels (default: all cores)"))
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from tools.serve import Model, create_app
    except ImportError as err:
        raise ConfigError(f"rduflow serve needs the 'serve' extra ({err.name} is not installed): "
                          "pip install 'rduflow[serve]'") from None
    pef = read_pef(args.pef)
    if pef.header.mode != "inference":
        raise ConfigError(f"{args.pef}: rduflow serve needs a PEF compiled with 'rduflow compile --inference'; "
                          f"this one is a {pef.header.mode} PEF")
    limits = pef_limits(pef)
    weight_files(args.checkpoint)
    tokenizer, _ = checkpoint_tokenizer(args.checkpoint)
    template = ChatTemplate.from_folder(args.checkpoint)
    listener = _listen(args.host, args.port)
    program = load(pef, threads=args.threads)
    load_weights(program, args.checkpoint)
    engine = Engine(ProgramSteps(program), max_queued=args.max_queued)
    name = args.served_model_name or args.checkpoint.resolve().name
    model = Model(name, tokenizer, template, frozenset(eos_token_ids(args.checkpoint, tokenizer, limits.vocab)),
                  engine)
    port = listener.getsockname()[1]
    print(f"Serving {name} on http://{args.host}:{port} ({limits.batch} slots, context "
          f"{limits.max_seq_length} tokens, {'a' if template else 'no'} chat template)", flush=True)
    config = uvicorn.Config(create_app(model), host=args.host, port=port, access_log=False,
                            timeout_graceful_shutdown=args.shutdown_timeout)
    uvicorn.Server(config).run(sockets=[listener])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one); ConfigError if the address cannot be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as err:  # create_server adds the address to strerror; gaierror has no errno to name
        reason = os.strerror(err.errno) if (err.errno or 0) > 0 else err.strerror or str(err)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
