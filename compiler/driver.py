"""The compile driver: a model through the compiler's stages, in order.

    frontend (RDL -> forward graph) -> [training graph] -> [passes] -> [backend]

`compile_model(options)` runs them; each stage is one marked call below.
`options.emit` stops early: "ir" after the frontend (and the training graph),
"ir-opt" and "dot" after the passes.
A MODEL is an `.rdl` file, a zoo name, or a Hugging Face checkpoint folder whose
`config.json` picks the zoo model and sizes it; `options.hf_config` stands for the
`config.json` of a MODEL that is no folder (a GGUF file: `tools` reads its metadata,
since the compiler does not import the runtime's readers).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import attrs

from backend.driver import backend_stage
from backend.pef.file import PEF
from backend.pef.targets import load_target
from compiler import zoo
from compiler.config import Setting, load_yaml, parse_overrides, resolve
from compiler.frontend import Source, lower, parse_module
from compiler.generation import generation_graphs, share_params
from compiler.hf_config import hf_model, read_hf_config
from compiler.pass_manager.levels import level_pipeline
from compiler.passes import PassManager
from compiler.passes.cast_weights import CastWeights
from compiler.passes.plan_memory import with_memory_plan
from compiler.training import TrainingOptions, build_training_graph
from ir.errors import ConfigError
from ir.graph import Graph
from ir.verifier import verify


@attrs.frozen
class CompileOptions:
    """What to compile and how (flags of `rduflow compile`)."""

    model: str
    overrides: tuple[str, ...] = ()
    config_file: str | None = None
    batch_size: int | None = None
    inference: bool = False
    emit: str | None = None  # "ir": stop after the frontend (and training graph); "ir-opt"/"dot"/"svg": after the passes
    target: str = "sn40l"  # a preset name or a target YAML file
    n_chips: int = 1
    num_tiles: int | None = None  # tiles per chip (default: all)
    pack_sections: bool = True  # False at -O0: one kernel per section
    training: TrainingOptions = attrs.field(factory=TrainingOptions)  # optimizer and clipping (training only)
    weight_dtype: str = "f32"  # inference: the storage type of weight matrices and embeddings (cast-weights)
    #: a Hugging Face config.json object describing MODEL (a GGUF file's metadata, converted)
    hf_config: dict[str, Any] | None = None


@attrs.define
class Compiled:
    """The result: the resolved config and the graph after the last stage that ran."""

    source: Source
    config: dict[str, Any]
    #: the forward graph, as the frontend built it
    forward: Graph
    #: the graph after the last stage that ran
    graph: Graph
    #: the Hugging Face folder (or GGUF file) MODEL named, if it was one (its weights initialize the params)
    checkpoint: Path | None = None
    #: the compiled program, once the backend stage ran
    pef: PEF | None = None
    #: generation entry points (inference of a model with caches): "prefill" and "decode" graphs,
    #: sharing `graph`'s params once the passes ran (see `compiler.generation`)
    entries: dict[str, Graph] = attrs.field(factory=dict)


@attrs.frozen
class ModelSource:
    """Where a model comes from: its RDL, settings implied by a checkpoint, the checkpoint folder."""

    source: Source
    settings: tuple[Setting, ...] = ()
    checkpoint: Path | None = None


def find_model(model: str, hf_config: dict[str, Any] | None = None) -> ModelSource:
    """An `.rdl` file, a Hugging Face checkpoint folder, or a zoo model, by name; or the zoo model
    a given `config.json` object (`hf_config`, read from the file `model`) picks."""
    path = Path(model)
    if hf_config is not None:
        hf = hf_model(hf_config, model)
        return ModelSource(zoo.source(hf.zoo), tuple(hf.settings), path)
    if path.is_dir():
        hf = read_hf_config(path)
        return ModelSource(zoo.source(hf.zoo), tuple(hf.settings), path)
    if path.is_file() or path.suffix == ".rdl":
        return ModelSource(Source.read(path))
    if model in zoo.names():
        return ModelSource(zoo.source(model))
    close = difflib.get_close_matches(model, zoo.names(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown model '{model}': not an .rdl file, a checkpoint folder or a zoo model "
                      f"({', '.join(zoo.names())}){hint}")


def settings(options: CompileOptions, implied: tuple[Setting, ...] = ()) -> list[Setting]:
    """Config settings in order of precedence: checkpoint, --config file, -b, overrides."""
    out = list(implied)
    if options.config_file is not None:
        out += load_yaml(options.config_file)
    if options.batch_size is not None:
        out.append(Setting("batch_size", options.batch_size, "-b/--batch-size"))
    return out + parse_overrides(options.overrides)


def compile_model(options: CompileOptions, pass_manager: PassManager | None = None) -> Compiled:
    """Run the stages on `options.model`; raise an `RduflowError` for any user mistake.

    `pass_manager` runs stage 3 (default: the -O1 pipeline, see `tools.pass_options`).
    """
    if options.weight_dtype != "f32" and not options.inference:
        raise ConfigError(f"--weight-dtype {options.weight_dtype} needs --inference: trained weights stay f32")
    found = find_model(options.model, options.hf_config)
    module = parse_module(found.source)
    config = resolve(module.schema, settings(options, found.settings))
    # --- stage 1: frontend ------------------------------------------------------------
    forward = lower(module, config, training=not options.inference)
    verify(forward)
    result = Compiled(found.source, config, forward, forward, found.checkpoint)
    if options.inference:
        result.entries = generation_graphs(module, config)
    # --- stage 2: training graph (training mode only) -----------------------------------
    if not options.inference:
        result.graph = build_training_graph(forward, options.training)
    if options.emit == "ir":
        return result
    # --- stage 3: passes ----------------------------------------------------------------
    manager = pass_manager or PassManager.parse(level_pipeline("O1"))
    manager.target = options.target
    if options.weight_dtype != "f32":
        manager.passes.insert(0, CastWeights(options.weight_dtype))
    share_params([result.graph, *result.entries.values()])
    result.graph = manager.run(result.graph)
    result.entries = {name: manager.run(graph) for name, graph in result.entries.items()}
    if options.emit in ("ir-opt", "dot", "svg"):
        return result
    # --- stage 4: backend (on graphs planned for the target: a --pipeline may lack plan-memory) ---
    target = load_target(options.target)
    for graph in (result.graph, *result.entries.values()):
        with_memory_plan(graph, target, pack=options.pack_sections)
    recorded = {**config, "weight_dtype": options.weight_dtype} if options.inference \
        else {**config, "training": options.training.model_dump()}
    result.pef = backend_stage(result.graph, target=options.target, n_chips=options.n_chips,
                               num_tiles=options.num_tiles, pack=options.pack_sections,
                               inference=options.inference, settings=recorded, source=found.source.text,
                               entries=result.entries)
    return result
