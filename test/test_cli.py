"""The `irvs` entry point: lists its subcommands, rejects unknown ones, and each subcommand parses --help."""

import subprocess
import sys

import pytest

from irvs_ros import cli


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demos", "train", "export", "eval", "bench", "demo"):
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_subcommand_help(name):
    # A real process through the installed console script's module, as a user would run it.
    proc = subprocess.run([sys.executable, "-m", "irvs_ros.cli", name, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"irvs {name}" in proc.stdout
