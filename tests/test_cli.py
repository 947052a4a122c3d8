"""The command line: help, version, and one-line user errors."""

import subprocess
import sys
from pathlib import Path

import pytest

import segkit
from segkit.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: segkit" in out and "list" in out


def test_python_dash_m_version():
    result = subprocess.run([sys.executable, "-m", "segkit", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"segkit {segkit.__version__}"


def test_list_names_equal_the_registries():
    import segkit
    from segkit.names import CLASSIFIER_NAMES, ENCODER_NAMES

    assert list(ENCODER_NAMES) == segkit.list_encoders()
    assert list(CLASSIFIER_NAMES) == segkit.list_classifiers()


QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["list"], ["list", "--classifiers"], ["evaluate"],
                                  ["train"], ["predict", "--overlap"], ["export", "--help"],
                                  # argument and config errors that were found after import torch (3-6 s):
                                  ["train", QUICKSTART, "--out", "r", "--max-steps", "0"], ["train", "nosuch.yaml", "--out", "r"],
                                  ["train", QUICKSTART, "--out", "r", "trainer.epoch=3"],
                                  ["predict", "--checkpoint", "c.pt", "--input", "i", "--output", "o", "--tile", "0"],
                                  ["evaluate", "--checkpoint", "c.pt", "--overlap", "1.5"],
                                  ["export", "--checkpoint", "c.pt", "--format", "onnx", "--size", "0", "9"], ["weights", "fetch"]])
def test_help_list_and_argument_errors_answer_without_importing_torch(argv):
    """Start-up: these must not pay for `import torch` (2-3 s on a small machine)."""
    import subprocess
    import sys

    code = ("import sys\nfrom segkit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy'))[:5]")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_train_usage_names_only_what_is_required(capsys):
    """KEY=VALUE overrides are optional: argparse called them required when the config was missing."""
    with pytest.raises(SystemExit):
        main(["train", "--out", "r"])
    err = capsys.readouterr().err
    assert "required: config" in err and "KEY=VALUE" not in err.splitlines()[-1]


@pytest.mark.parametrize("argv", [["weights", "fetch", "nosuch"], ["weights", "list", "resnet18_a"]])
def test_weights_names_without_published_weights_point_at_the_list(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "`segkit weights list` shows the names" in err and "weights=None" not in err
