"""Subcommands of `rduflow`: each module here has `register(subparsers)`.

A module's `register` adds its parser (calling `tools.cli.add_debug_flag`) and sets
`func` to a callable taking the parsed arguments and returning an exit code.
"""

COMMANDS: list[str] = ["data_prep", "opt", "passes", "compile", "pef", "targets", "quickstart", "run", "serve"]
