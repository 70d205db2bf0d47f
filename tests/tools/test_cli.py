"""The `rduflow` command's shared behaviour: integer option types, hidden debug options."""
import pytest

from tools.cli import main


@pytest.mark.parametrize("argv, message", [
    (["compile", "mlp", "-b", "0"], "argument -b/--batch-size: expected a positive integer, got '0'"),
    (["compile", "mlp", "--n-chips", "x"], "argument --n-chips: expected a positive integer, got 'x'"),
    (["run", "x.pef", "--seed", "-1"], "argument --seed: expected a non-negative integer, got '-1'"),
    (["quickstart", "--debug", "--num-steps", "0"], "argument --num-steps: expected a positive integer, got '0'"),
])
def test_bad_integer_options_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_hidden_options_show_only_with_debug(capsys):
    for argv, shown in ((["compile", "--help"], False), (["compile", "--debug", "--help"], True)):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert ("--crash-dir" in out) is shown  # a debugging option
        assert "--betas" in out and "--eps" in out  # AdamW's settings are ordinary options
