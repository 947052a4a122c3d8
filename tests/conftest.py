"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.hub


@pytest.fixture(scope="session", autouse=True)
def subprocess_tmpdir(tmp_path_factory):
    """Temporary files of the programs tests start (torchrun leaves a ``torchelastic_*`` folder per run)
    go under pytest's base folder, which a passing session deletes, instead of piling up in /tmp."""
    folder = tmp_path_factory.mktemp("subprocess-tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The built-in synthetic dataset, 8 images of 64x64 (6 train, 2 val), written once per test module."""
    from segkit.data import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, n=8, size=64, seed=1)
    return root


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache; downloading fails the test unless a test allows it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise AssertionError(f"segkit tried to download {args[0] if args else kwargs}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints
