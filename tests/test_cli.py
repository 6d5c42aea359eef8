"""The `ib-ft` front door: a user error is one line naming the flag or path and exits 2; `--debug` keeps the
traceback."""

import pytest

from trl_ib import cli
from trl_ib.cli.arguments import parse_ib_layers


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--ib_dim", "-3"],
            "ib-ft train: error: ib_dim=-3: must be an int >= 1. (--debug shows the traceback)",
        ),
        (
            ["eval", "--model_name_or_path", "smollm2-135m-instruct", "--dataset", "missing.jsonl"],
            "ib-ft eval: error: Unable to find '{cwd}/missing.jsonl' (--debug shows the traceback)",
        ),
    ],
)
def test_user_errors_print_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == message.format(cwd=tmp_path)


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^ib_dim=-3: must be an int >= 1\.$"):
        cli.main(["train", "--debug", "--ib_dim", "-3"])


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit, match="unknown command 'trian'; choose one of train, tune, eval"):
        cli.main(["trian"])


@pytest.mark.parametrize(
    "value, expected", [("19", 19), ("0.625", 0.625), ("10,19", [10, 19]), (3, 3), ([1, 2], [1, 2])]
)
def test_ib_layers_flags_parse_as_the_config_takes_them(value, expected):
    assert parse_ib_layers(value) == expected


def test_ib_layers_flag_errors_name_the_field():
    with pytest.raises(ValueError, match=r"^ib_layers='x': expected a relative depth"):
        parse_ib_layers("x")
    with pytest.raises(ValueError, match=r"^ib_layers='1,2': one block is read here"):  # ib-ft memorization
        parse_ib_layers("1,2", single=True)
