"""Subcommands of `rduflow`: one `Command` line each in `COMMANDS`.

A command's module is imported only when that command runs (or its help is shown), so
`rduflow --help` and `--version` load none of the machinery. The module has
`register(subparsers)`, which adds its parser (calling `tools.arguments.add_debug_flag`) and
sets `func` to a callable taking the parsed arguments and returning an exit code.
"""
from typing import NamedTuple


class Command(NamedTuple):
    name: str  #: as typed: `rduflow NAME`
    module: str  #: the module with `register`, imported on use
    help: str  #: the line in `rduflow --help`


COMMANDS: list[Command] = [
    Command("data-prep", "tools.commands.data_prep", "tokenize and pack text or jsonl into HDF5 training data"),
    Command("opt", "tools.commands.opt", "run a pass pipeline on an IR file and print the result"),
    Command("passes", "tools.commands.passes", "list the passes, their options and the -O pipelines"),
    Command("compile", "tools.commands.compile",
            "compile a model: an .rdl file, a zoo model, a Hugging Face checkpoint folder or a .gguf file"),
    Command("pef", "tools.commands.pef", "show what a PEF file holds"),
    Command("targets", "tools.commands.targets", "list the RDU target presets (or describe a target file)"),
    Command("quickstart", "tools.commands.quickstart",
            "the whole workflow on a bundled Shakespeare play, in about half a minute"),
    Command("run", "tools.commands.run", "run a PEF: train with a training PEF, generate with an inference PEF"),
    Command("serve", "tools.commands.serve", "serve a generation PEF over the OpenAI API (continuous batching)"),
    Command("plot", "tools.commands.plot", "draw the loss and dev-loss curves of training runs"),
]
