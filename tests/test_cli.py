"""The command line: help, version, and one-line user errors."""

import subprocess
import sys

import segkit
from segkit.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: segkit" in out and "list" in out


def test_python_dash_m_version():
    result = subprocess.run([sys.executable, "-m", "segkit", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"segkit {segkit.__version__}"
