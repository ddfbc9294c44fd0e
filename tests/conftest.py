"""Shared fixtures: small configurations and party tables in temporary folders, and
MPC runs shared between the tests that only read them."""

from __future__ import annotations

import dataclasses

import pytest

from petlab.config import poc_config, resolved_engine

#: A run small enough for CI: 2,000 customers, 3 epochs.
SMALL = dict(rows=2000, epochs=3, batch_size=256, timeout_s=600)


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "parties"
    root.mkdir()
    return root


@pytest.fixture
def small_config(data_root):
    """A run small enough for CI: 2,000 customers, 3 epochs."""

    def make(**overrides):
        params = dict(SMALL, root=str(data_root))
        params.update(overrides)
        return poc_config(**params)

    return make


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory):
    """``shared_run(**overrides) -> (config, PocResult)``: the run of ``SMALL`` with
    ``overrides``, made once per test session and shared by every test that asks for the
    same configuration (the engine as it resolves: ``auto`` is petlab's on the CPU). For
    tests that read a run's records and never change its tables."""
    root = tmp_path_factory.mktemp("shared-runs")
    runs: dict = {}

    def get(**overrides):
        from petlab.pipeline import run_poc

        config = poc_config(**{**SMALL, "root": str(root / "parties"), **overrides})
        key = dataclasses.replace(config, mpc=dataclasses.replace(config.mpc, engine=resolved_engine(config)))
        if key not in runs:
            runs[key] = (config, run_poc(config=config, runs_root=str(root / f"run-{len(runs)}"), progress=False))
        return runs[key]

    return get
