"""`rduflow compile MODEL [KEY=VALUE ...]`: compile a model (RDL file, zoo name, checkpoint folder or GGUF file).

A GGUF file's metadata is turned into the `config.json` object the compiler takes here,
in `tools`: the reader lives in the runtime (which loads the file's weights), and the
compiler does not import the runtime."""
from __future__ import annotations

import argparse
import sys

from backend.pef.targets import load_target
from compiler.driver import CompileOptions, compile_model
from compiler.opt_report import optimization_report
from compiler.training import TrainingOptions
from ir.errors import ConfigError
from ir.printer import print_graph
from runtime import gguf_model
from runtime.cost_model import scaling_lines
from runtime.gguf import read_gguf
from tools import arguments
from tools.backend_options import add_backend_options, backend_options, write_output
from tools.dot import graph_to_dot, render_svg
from tools.pass_options import add_pass_options, pass_manager_from_args


def _intermixed(parser: argparse.ArgumentParser) -> None:
    """Let KEY=VALUE overrides come before, between or after options."""
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        parser.parse_known_args = plain
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse_known_args

    parser.parse_known_args = parse_known_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile",
        description="Compile MODEL (an .rdl file, a zoo model name, a Hugging Face checkpoint folder "
                    "whose config.json picks the zoo model and its sizes, or a .gguf file whose metadata "
                    "does the same). Model config fields are set "
                    "with Hydra-style overrides: model.n_layer=2, +model.key=value adds a key.")
    parser.add_argument("model", metavar="MODEL", help="an .rdl file, a zoo model name, a checkpoint folder or a .gguf file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. model.n_layer=12 model.n_embd=768")
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="a config file ('model: {n_layer: 2, ...}'); flags and overrides apply on top")
    parser.add_argument("-b", "--batch-size", type=arguments.positive_int, metavar="N",
                        help="batch size (sets model.batch_size; a new size needs a recompile)")
    parser.add_argument("--inference", action="store_true",
                        help="forward only: the graph's output is the logits (default: training)")
    parser.add_argument("--weight-dtype", choices=("f32", "bf16", "f16", "q8_0", "q4_0", "q4_1"), default="f32",
                        help="with --inference: store weight matrices and embeddings in this type; kernels "
                             "read them into f32 sums (bf16 halves the bytes a decode step streams; "
                             "q8_0/q4_0/q4_1: GGUF's 32-weight blocks, 8.5/4.5/5 bits a weight, for the matrices "
                             "only matmuls read, the rest f16; default: f32)")
    parser.add_argument("--emit", choices=("ir", "ir-opt", "dot", "svg"),
                        help="ir: print the IR after the frontend (and autodiff) and stop; ir-opt: the IR "
                             "after the passes; dot: a Graphviz view of the IR after the passes; svg: that view "
                             "drawn by Graphviz's dot (apt-get install graphviz)")
    parser.add_argument("--no-locs", dest="locs", action="store_false",
                        help="print the IR without source locations")
    parser.add_argument("--entry", choices=("prefill", "decode"),
                        help="with --emit and --inference: the graph of this generation entry point (a model "
                             "with a KV cache) instead of the forward pass")
    _add_training_options(parser)
    add_pass_options(parser)
    add_backend_options(parser)
    arguments.add_debug_flag(parser)
    parser.set_defaults(func=main)
    _intermixed(parser)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """The training graph's structure; the learning rate is a run-time input (`rduflow run --lr`)."""
    group = parser.add_argument_group("training graph (ignored with --inference)")
    group.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw",
                       help="the optimizer update in the graph (default: adamw)")
    group.add_argument("--momentum", type=float, default=0.0, metavar="M", help="SGD momentum (default: 0, none)")
    group.add_argument("--weight-decay", type=float, default=0.0, metavar="WD",
                       help="SGD: L2 term added to the gradient; AdamW: decoupled decay (default: 0)")
    group.add_argument("--max-grad-norm", type=float, metavar="N",
                       help="clip the global gradient norm to N (default: no clipping)")
    group.add_argument("--data-parallel", action="store_true",
                       help="one replica of data-parallel training: gradients all-reduced across the replicas "
                            "before clipping and the optimizer (run with 'mpirun -n N rduflow run PEF "
                            "--data-parallel ...')")
    group.add_argument("-ws", "--world-size", type=arguments.positive_int, default=1, metavar="N",
                       help="with --data-parallel: the number of replicas (default: 1)")
    group.add_argument("--reduce-on-rdu", action="store_true",
                       help="with --data-parallel: model the all-reduce over RDU-to-RDU links instead of "
                            "through the hosts")
    group.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"),
                       help="AdamW's betas (default: 0.9 0.999)")
    group.add_argument("--eps", type=float, default=1e-8, help="AdamW's epsilon (default: 1e-8)")


def training_options(args: argparse.Namespace) -> TrainingOptions:
    """TrainingOptions from the flags; ConfigError naming the flag of a bad value."""
    if args.data_parallel and args.inference:
        raise ConfigError("--data-parallel makes a training graph; an --inference PEF serves one process")
    if (args.world_size > 1 or args.reduce_on_rdu) and not args.data_parallel:
        flag = f"--world-size {args.world_size}" if args.world_size > 1 else "--reduce-on-rdu"
        raise ConfigError(f"{flag} needs --data-parallel (a data-parallel training graph)")
    return TrainingOptions.parse(lambda field: "--" + field.replace("_", "-"), optimizer=args.optimizer,
                                 momentum=args.momentum, weight_decay=args.weight_decay,
                                 max_grad_norm=args.max_grad_norm, betas=tuple(args.betas), eps=args.eps,
                                 data_parallel=args.data_parallel, world_size=args.world_size,
                                 reduce_on_rdu=args.reduce_on_rdu)


def options_from(args: argparse.Namespace) -> CompileOptions:
    hf_config = gguf_model.hf_config(read_gguf(args.model)) if gguf_model.is_gguf(args.model) else None
    return CompileOptions(model=args.model, overrides=tuple(args.overrides), config_file=args.config,
                          batch_size=args.batch_size, inference=args.inference, emit=args.emit,
                          training=training_options(args), weight_dtype=args.weight_dtype, hf_config=hf_config,
                          **backend_options(args))


def main(args: argparse.Namespace) -> int:
    if args.entry and not (args.emit and args.inference):
        raise ConfigError("--entry needs --emit and --inference (it picks the graph to print)")
    result = compile_model(options_from(args), pass_manager_from_args(args))
    graph = result.graph
    if args.entry:
        if args.entry not in result.entries:
            raise ConfigError(f"--entry {args.entry}: the model has no generation entry points (it declares no cache)")
        graph = result.entries[args.entry]
    if args.emit in ("ir", "ir-opt"):
        sys.stdout.write(print_graph(graph, with_locs=args.locs))
        return 0
    if args.emit in ("dot", "svg"):
        dot = graph_to_dot(graph)
        sys.stdout.write(render_svg(dot) if args.emit == "svg" else dot)
        return 0
    write_output(args, result.pef)
    if args.stats:  # fusion, tiles and the memory plan, per section (after the backend's report)
        sections = [(s.phase, s.kernels) for s in result.pef.sections]
        print(optimization_report(result.graph, load_target(args.target), sections))
        if not args.inference:
            print("\n".join(scaling_lines(result.pef)))
    return 0
