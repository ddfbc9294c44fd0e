"""The command line: bad arguments end with one line and no work; a small run works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _petlab(*args, cwd, timeout=600, env=()):
    return subprocess.run([sys.executable, "-m", "petlab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **dict(env)})


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


def _one_line_and_log(out) -> tuple[str, Path]:
    """A failed run's stderr: one line naming the cause, then the log that holds the rest
    (after the column summaries and warnings the tables' check printed before the run)."""
    lines = out.stderr.strip().splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("petlab "))
    assert not any(line.startswith(("Traceback", "  File ")) for line in lines[:failed]), out.stderr
    lines = lines[failed:]
    assert out.returncode == 1 and len(lines) == 2 and lines[1].startswith("log: "), out.stderr
    log = Path(lines[1].removeprefix("log: "))
    assert log.is_file(), log
    return lines[0], log


def test_a_bad_flag_is_one_line_naming_the_flag(tmp_path):
    out = _petlab("poc", "--epochs", "many", "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "argument --epochs: invalid int value: 'many'" in lines[0] and "petlab poc --help" in lines[0]
    assert not (tmp_path / "run").exists()


def _tables_without_shared_customers(tmp_path):
    from petlab.data.synthetic import make_engagement_tables

    t = make_engagement_tables(rows=400, seed=2, overlap=0.8, wallet_extra=0.2)
    wallet = t["wallet"].copy()
    wallet["customer_id"] = "other-" + wallet["customer_id"].astype(str)  # no id in common
    paths = {party: tmp_path / f"{party}.csv" for party in ("gateway", "wallet")}
    t["gateway"].to_csv(paths["gateway"], index=False)
    wallet.to_csv(paths["wallet"], index=False)
    return paths


@pytest.mark.mpc
def test_psi_finding_too_few_shared_customers_is_one_line_with_the_log(tmp_path):
    """(With each role a fresh interpreter, as where the OS cannot fork: that launcher too.)"""
    paths = _tables_without_shared_customers(tmp_path)
    out = _petlab("poc", "--gateway-table", str(paths["gateway"]), "--wallet-table", str(paths["wallet"]),
                  "--id-column", "customer_id", "--label-column", "engaged", "--provider", "TFP", "--quiet",
                  "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=300, env={"PETLAB_FORK": "0"})
    line, log = _one_line_and_log(out)
    assert line.startswith("petlab poc: MPC run failed: ") and "private set intersection" in line, line
    assert "0 customers" in line or "shared" in line, line
    assert "Traceback" in log.read_text() and "Traceback" not in out.stderr  # the traceback is in the log
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "private set intersection" in status["error"]
    party = json.loads((log.parent / "status.json").read_text())
    assert party["status"] == "failed" and "private set intersection" in party["message"]
    assert not (tmp_path / "run" / "parties" / "launch.log").exists()  # no zygote: one interpreter per role


@pytest.mark.mpc
def test_a_party_process_dying_is_one_line_naming_it(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "petlab", "poc", "--rows", "1000", "--epochs", "500",
                             "--provider", "TFP", "--quiet", "--data-root", str(tmp_path / "data"),
                             "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    status = run / "parties" / "wallet" / "status.json"
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the wallet never started"
        try:
            pid = json.loads(status.read_text())["pid"]
            break
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    line, log = _one_line_and_log(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert line == "petlab poc: MPC run failed: wallet: the process was killed (SIGKILL) before it reported an error"
    assert log == run / "parties" / "wallet" / "party.log"
    assert json.loads((run / "status.json").read_text())["status"] == "failed"
