"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The built-in synthetic dataset, 8 images of 64x64 (6 train, 2 val), written once per test module."""
    from segkit.data import make_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(root, n=8, size=64, seed=1)
    return root
