"""The command line: bad arguments end with one line and no work; a small run works."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _petlab(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "petlab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "svm"], "unknown model 'svm'"),
        (["--rows", "50"], "rows=50 is too small"),
        (["--device", "cuda"], "torch sees no CUDA GPU"),
        (["--provider", "nope"], "unknown provider 'NOPE'"),
        (["--params", "missing.yaml"], "params file not found"),
    ],
)
def test_bad_arguments_fail_fast_with_one_line(tmp_path, args, message):
    out = _petlab("poc", "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "data"), *args,
                  cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_existing_out_folder_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    out = _petlab("poc", "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "never overwritten" in out.stderr
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_help_documents_the_flags(tmp_path):
    out = _petlab("poc", "--help", cwd=tmp_path, timeout=120)
    for flag in ("--rows", "--model", "--epochs", "--provider", "--device", "--seed", "--out"):
        assert flag in out.stdout


@pytest.mark.mpc
def test_cli_run_writes_the_run_folder(tmp_path):
    out = _petlab("poc", "--rows", "1000", "--epochs", "2", "--provider", "TFP", "--quiet",
                  "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "report:" in out.stdout and "collaboration gain" in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_train"] == 560 and metrics["n_test"] == 140  # 700 shared customers (overlap 0.7)
    assert metrics["psi"]["gateway"]["intersection_size"] == 700
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "complete"
    assert (tmp_path / "data" / "gateway").is_dir() and (tmp_path / "data" / "wallet").is_dir()
