"""What a new user meets on the command line: startup, flags, reports, locations, prompts, pictures.

Each test runs `rduflow` through its entry point (`tools.cli.main`) or as a subprocess
whose output is redirected to a file, as `> FILE` does.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from compiler import zoo
from ir.errors import display_path
from tools.cli import build_parser, main
from tools.commands import COMMANDS

REPO = Path(__file__).parents[1]
GPT2_TINY = REPO / "tests" / "fixtures" / "hf" / "gpt2-tiny"
#: what `rduflow --help` must not import: the subcommands' machinery
HEAVY = ("numpy", "ml_dtypes", "rich", "llvmlite", "h5py", "lark", "pydantic", "compiler", "backend", "runtime")


def rduflow(*argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `rduflow ARGV` run in process (usage errors included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def redirected(tmp_path: Path, *argv: str, cwd: Path = REPO) -> str:
    """stdout of `rduflow ARGV > FILE` in a subprocess (a terminal would be 80 columns wide)."""
    target = tmp_path / "stdout.txt"
    with target.open("w") as handle:
        done = subprocess.run([sys.executable, "-m", "tools.cli", *argv], cwd=cwd, stdout=handle,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return target.read_text()


@pytest.fixture(scope="module")
def pefs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pefs")
    assert main(["compile", str(GPT2_TINY), "-o", str(out), "--pef-name", "train"]) == 0
    assert main(["compile", str(GPT2_TINY), "--inference", "-b", "1", "-o", str(out), "--pef-name", "generate"]) == 0
    return {name: out / name / f"{name}.pef" for name in ("train", "generate")}


# --- startup and the command line ---------------------------------------------------------
@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_none_of_the_machinery(flag):
    probe = (f"import sys\nfrom tools.cli import main\ntry:\n    main([{flag!r}])\nexcept SystemExit:\n    pass\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_top_level_help_lists_every_command_with_its_line():
    code, out, _ = rduflow("--help")
    assert code == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command.name}\s", out, re.MULTILINE), command.name
    assert "plot" in out and "draw the loss and dev-loss curves" in out


def test_each_command_help_is_complete():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {c.name for c in COMMANDS}
    compile_help = sub.choices["compile"].format_help()
    assert "--betas B1 B2" in compile_help and "--eps EPS" in compile_help and "--optimizer" in compile_help
    assert "--num-steps N" in sub.choices["quickstart"].format_help()
    run_help = re.sub(r"\s+", " ", sub.choices["run"].format_help())
    assert "the PEF's mode decides what a run does" in run_help and "--profile-top N" in run_help
    assert "--threads" not in run_help  # a debugging option stays behind --debug


@pytest.mark.parametrize("argv, usage, nearest", [
    (("compile", "gpt2", "--optimiser", "adam"), "usage: rduflow compile ", "--optimizer"),
    (("run", "x.pef", "--inference", "--prompt", "hi", "--tempreature", "0.5"), "usage: rduflow run ", "--temperature"),
    (("pef", "info", "x.pef", "--jsno"), "usage: rduflow pef info ", "--json"),
    (("data-prep", "--input", "a", "--output", "b", "--max-seq-length", "8", "--dev-ration", "0.1"),
     "usage: rduflow data-prep ", "--dev-ratio"),
])
def test_an_unknown_flag_shows_the_subcommand_usage_and_the_nearest_flag(argv, usage, nearest):
    code, out, err = rduflow(*argv)
    assert code == 2 and out == ""
    assert err.startswith(usage)
    assert re.search(rf"error: unrecognized arguments?: .*\(did you mean {nearest}\?\)$", err.strip())


def test_an_inference_pef_refuses_training_options_and_says_its_mode(pefs, capsys):
    code, _, err = rduflow("run", str(pefs["generate"]), "--prompt-ids", "1,2", "--num-steps", "3")
    assert code == 1
    assert f"--num-steps is a training option, but {pefs['generate']} is an inference PEF (its mode, set at " \
           "compile time, decides what the run does)" in err


# --- reports ------------------------------------------------------------------------------
def test_pef_info_redirected_keeps_names_and_marks_no_option_wrongly(pefs, tmp_path):
    text = redirected(tmp_path, "pef", "info", str(pefs["train"]))
    assert "…" not in text
    assert "│ transformer.wte.weight " in text and "│ transformer.h.1.attn.c_attn.weight " in text
    assert "(recompile)" not in text
    head, *wrapped = text[text.index("options  "):text.index("\nsymbols")].splitlines()
    assert head == "options  changing any of these needs a recompile (run-time inputs, such as lr, do not):"
    assert len(wrapped) > 1 and all(line.startswith(" " * 9) and line[9] != " " for line in wrapped)
    assert "batch_size=" in wrapped[0] and "training.optimizer=adamw" in " ".join(wrapped)


def test_compile_stats_explains_both_on_chip_sizes_and_the_untiled_case(tmp_path):
    code, out, _ = rduflow("compile", "gpt2", "model.n_layer=1", "--stats", "-o", str(tmp_path))
    assert code == 0
    reserved = re.search(r"^memory the PEF reserves: .*on chip ([\d,]+) bytes = ([\d,]+) of graph tensors used "
                         r"within one section \+ ([\d,]+) of kernel temporaries$", out, re.MULTILINE)
    planned = re.search(r"^memory plan of the graph's tensors .*onchip arena ([\d,]+) bytes", out, re.MULTILINE)
    number = lambda text: int(text.replace(",", ""))  # noqa: E731
    assert reserved and planned
    assert number(reserved[1]) == number(reserved[2]) + number(reserved[3])
    assert number(reserved[2]) == number(planned[1])  # the same on-chip graph tensors, told two ways
    assert "tiles: no op is tiled (the tile pass runs at -O3)" in out
    assert " = - " not in out and "(default tiles: -)" not in out
    fusion = re.search(r"modeled kernel traffic ([\d,]+) bytes, ([\d.]+)x less than the ([\d,]+) bytes", out)
    assert float(fusion[2]) == pytest.approx(number(fusion[3]) / number(fusion[1]), abs=0.005)


def test_compile_stats_with_tiles_gives_the_bound_and_the_default(tmp_path):
    code, out, _ = rduflow("compile", "mlp", "-O3", "--target", "rdu-mini", "--stats", "-o", str(tmp_path))
    assert code == 0
    assert re.search(r"^tiles: \d+ ops tiled; modeled traffic [\d,]+ bytes = [\d.]+x the lower bound [\d,]+ of any "
                     r"tiling \(default tiles: [\d,]+ bytes, [\d.]+x\)$", out, re.MULTILINE)


# --- locations ----------------------------------------------------------------------------
def test_ir_locations_name_a_file_an_editor_opens_from_the_working_directory(tmp_path, monkeypatch):
    code, out, _ = rduflow("compile", "mlp", "--inference", "--emit", "ir")
    files = set(re.findall(r'loc\("([^"]+)":\d+:\d+\)', out))
    assert files == {"compiler/zoo/mlp.rdl"} if Path.cwd() == REPO else len(files) == 1
    assert all(Path(f).is_file() for f in files)
    monkeypatch.chdir(tmp_path)  # elsewhere: an absolute path
    code, out, _ = rduflow("compile", "mlp", "--inference", "--emit", "ir")
    assert set(re.findall(r'loc\("([^"]+)":\d+:\d+\)', out)) == {str(Path(zoo.__file__).parent.resolve() / "mlp.rdl")}
    code, _, err = rduflow("compile", "gpt2", "model.n_head=5", "--emit", "ir")
    where = re.match(r"(.+):21:1: error: assertion failed", err)[1]
    assert code == 1 and Path(where).is_absolute() and Path(where).is_file()


def test_a_pef_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    assert main(["compile", "mlp", "-o", str(tmp_path / "x")]) == 0
    monkeypatch.chdir(tmp_path / "a")
    assert main(["compile", "mlp", "-o", str(tmp_path / "y")]) == 0
    assert (tmp_path / "x" / "mlp" / "mlp.pef").read_bytes() == (tmp_path / "y" / "mlp" / "mlp.pef").read_bytes()
    code, out, _ = rduflow("pef", "dump", str(tmp_path / "x" / "mlp" / "mlp.pef"), "--section", "0")
    assert display_path(str(Path(zoo.__file__).parent.resolve() / "mlp.rdl")) in out


# --- generation ---------------------------------------------------------------------------
def test_a_text_prompt_on_a_checkpoint_without_a_tokenizer_says_what_to_pass(pefs):
    code, out, err = rduflow("run", str(pefs["generate"]), "--checkpoint", str(GPT2_TINY), "--prompt", "héllo")
    assert code == 1 and out == ""
    assert err.strip() == (
        f"error: --prompt 1: checkpoint {GPT2_TINY} has no tokenizer, so the text was read as UTF-8 bytes, and byte "
        "195 is outside the model's vocabulary (0..127); pass --prompt-ids (token ids), or a --checkpoint with a "
        "tokenizer (tokenizer.json, or vocab.json + merges.txt: one saved by 'rduflow run' has its data folder's)")


def test_time_to_first_token_says_what_the_user_waited_for(pefs):
    code, out, err = rduflow("run", str(pefs["generate"]), "--checkpoint", str(GPT2_TINY), "--prompt-ids", "1,2",
                             "--max-new-tokens", "2")
    assert code == 0, err
    line = re.search(r"^time to first token ([\d.]+) s \(prefill and first draw; before it, compiling the kernels "
                     r"and loading the weights took ([\d.]+) s: a user waited ([\d.]+) s\)$", out, re.MULTILINE)
    assert line and float(line[3]) == pytest.approx(float(line[1]) + float(line[2]), abs=0.011)
    code, out, _ = rduflow("run", str(pefs["generate"]), "--checkpoint", str(GPT2_TINY), "--prompt-ids", "1,2",
                           "--max-new-tokens", "2", "--json")
    data = json.loads(out)
    assert data["load_s"] > 0 and data["ttft_s"] > 0


# --- pictures -----------------------------------------------------------------------------
def _save_dir(tmp_path: Path, name: str, losses: list[float], dev: list[float]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "per_step_metrics.csv").write_text("step,epoch,loss,accuracy,lr\n" + "".join(
        f"{i + 1},1,{loss},,0.001\n" for i, loss in enumerate(losses)))
    (folder / "eval_metrics.csv").write_text("step,loss,perplexity,accuracy,rows\n" + "".join(
        f"{2 * (i + 1)},{loss},1.0,,8\n" for i, loss in enumerate(dev)))
    return folder


def test_plot_compares_runs_in_the_terminal_and_as_a_png(tmp_path):
    a = _save_dir(tmp_path, "run-a", [5.0, 4.0, 3.5, 3.0], [4.5, 3.2])
    b = _save_dir(tmp_path, "run-b", [5.0, 4.5, 4.2, 4.0], [4.8, 4.1])
    code, out, err = rduflow("plot", str(a), str(b), "-o", str(tmp_path / "cmp.png"))
    assert code == 0, err
    assert "training loss and dev loss by step" in out
    for label in ("run-a loss", "run-a dev loss", "run-b loss", "run-b dev loss"):
        assert label in out
    assert f"Plot written to {tmp_path / 'cmp.png'}" in out
    assert (tmp_path / "cmp.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    run = _save_dir(tmp_path, "run", [5.0, 4.0], [])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails as when it is missing
    code, out, err = rduflow("plot", str(run), "-o", str(tmp_path / "x.png"))
    assert code == 1 and "training loss by step" in out
    assert "needs matplotlib, which is not installed: pip install 'rduflow[plot]'" in err
    assert not (tmp_path / "x.png").exists()


def test_plot_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    run = _save_dir(tmp_path, "run", [5.0, 4.0], [])
    (tmp_path / "x.png").write_bytes(b"the user's picture")

    def no_space(*_args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", no_space)
    code, _, err = rduflow("plot", str(run), "-o", str(tmp_path / "x.png"))
    assert code == 1 and f"cannot write {tmp_path / 'x.png'}: No space left on device" in err
    assert (tmp_path / "x.png").read_bytes() == b"the user's picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "x.png"]


def test_plot_of_a_folder_without_metrics(tmp_path):
    code, _, err = rduflow("plot", str(tmp_path))
    assert code == 1 and f"{tmp_path}: no per_step_metrics.csv (give the --save-dir folder of a training run)" in err


def test_emit_dot_prints_dot_and_svg_needs_graphviz(tmp_path, monkeypatch):
    code, out, _ = rduflow("compile", "mlp", "--inference", "--emit", "dot")
    assert code == 0 and out.startswith('digraph "mlp" {') and out.rstrip().endswith("}")
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    code, out, err = rduflow("compile", "mlp", "--inference", "--emit", "svg")
    assert code == 1 and out == ""
    assert "--emit svg needs Graphviz's dot program on PATH: apt-get install graphviz" in err


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_emit_svg_draws_the_graph_with_graphviz(tmp_path):
    code, out, err = rduflow("compile", "mlp", "--inference", "--emit", "svg")
    assert code == 0, err
    assert "<svg" in out and out.rstrip().endswith("</svg>") and "matmul" in out
    (tmp_path / "g.ir").write_text(rduflow("compile", "mlp", "--inference", "--emit", "ir")[1])
    code, out, err = rduflow("opt", str(tmp_path / "g.ir"), "--emit", "svg", "-o", str(tmp_path / "g.svg"))
    assert code == 0, err
    assert "<svg" in (tmp_path / "g.svg").read_text()


def test_outputs_honour_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        assert main(["compile", "mlp", "-o", str(tmp_path)]) == 0
        (tmp_path / "g.ir").write_text("graph @g {\n  input %x : f32[2]\n  output y = %x\n}\n")
        assert main(["opt", str(tmp_path / "g.ir"), "-o", str(tmp_path / "h.ir")]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "mlp" / "mlp.pef").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "h.ir").stat().st_mode) == 0o640
