"""Shared fixtures: small configurations and party tables in temporary folders."""

from __future__ import annotations

import pytest

from petlab.config import poc_config


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "parties"
    root.mkdir()
    return root


@pytest.fixture
def small_config(data_root):
    """A run small enough for CI: 2,000 customers, 3 epochs."""

    def make(**overrides):
        params = dict(rows=2000, epochs=3, batch_size=256, root=str(data_root), timeout_s=600)
        params.update(overrides)
        return poc_config(**params)

    return make
