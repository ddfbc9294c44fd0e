"""Where the default run's seconds go before training, and what the loss monitor costs:
the ``startup`` section of ``BENCHMARKS.md`` (``petlab bench --sections startup``).

Each measurement is a real ``petlab poc`` (default parameters) started as its own
command, as a user starts it: the seconds from that command's launch to the gateway's
first training step, phase by phase, come from the timelines every role writes
(:mod:`petlab.mpc.timeline`) and the launcher's ``launch.json``. The loss monitor's cost
is the ``loss_monitor`` phase against the ``train`` phase of the same runs, and of one
run on CrypTen's operators (``--engine crypten``), where the loss is CrypTen's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from petlab.config import TrainConfig

MONITOR_ROWS = TrainConfig.monitor_rows  # the default run's

__all__ = ["measure_startup", "render_startup", "STARTUP_REPEATS"]

STARTUP_REPEATS = 5


def _poc(*, out: Path, data_root: str, extra=()) -> tuple[float, Path]:
    """Run ``petlab poc`` as a command; (its launch on the wall clock, its run folder)."""
    launched = time.time()
    done = subprocess.run([sys.executable, "-m", "petlab", "poc", "--quiet", "--data-root", data_root,
                           "--out", str(out), *extra], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if done.returncode != 0:
        raise RuntimeError(f"petlab poc failed: {done.stderr.strip().splitlines()[-1:]}")
    return launched, out


def _breakdown(*, launched: float, run: Path) -> dict:
    from petlab.mpc.timeline import startup_breakdown

    parties = run / "parties"
    records = {role: json.loads((parties / role / "result.json").read_text())
               for role in ("gateway", "wallet") if (parties / role / "result.json").is_file()}
    launch = json.loads((parties / "launch.json").read_text())
    rows = [{"phase": "command", "what": "`petlab poc` itself: interpreter, imports, tables, run folder",
             "seconds": launch["launched_at"] - launched}]
    rows += startup_breakdown(records=records, launched_at=launch["launched_at"])
    gateway = records["gateway"]
    return {"rows": rows, "total": sum(r["seconds"] for r in rows),
            "psi": next((r["seconds"] for r in rows if r["phase"] == "aligned"), 0.0),
            "train": gateway["phases"]["train"]["seconds"],
            "loss": gateway["phases"].get("loss_monitor", {}).get("seconds", 0.0),
            "epochs": json.loads((run / "params.json").read_text())["config"]["train"]["epochs"],
            "monitored": len(gateway.get("train_loss", [])), "run": str(run)}


def measure_startup(*, data_root: str, root: Path, repeats: int = STARTUP_REPEATS) -> dict:
    """``repeats`` default runs and one on CrypTen's operators, measured as above.

    Args:
        data_root: where the party tables are (made by the first run, reused after).
        root: folder for the run folders.
        repeats: default runs, each followed by one without the loss monitor (the
            section shows medians).

    Returns:
        ``{"petlab": [measurement per run], "crypten": measurement}``.
    """
    root.mkdir(parents=True, exist_ok=True)
    _poc(out=root / "startup-warm", data_root=data_root)  # tables made, files cached: not measured
    runs, unmonitored = [], []
    for i in range(repeats):  # alternately: the monitor's whole cost is training with it against without it
        print(f"[bench] start-up: default run {i + 1}/{repeats}, then without the loss monitor", file=sys.stderr,
              flush=True)
        launched, run = _poc(out=root / f"startup-{i}", data_root=data_root)
        runs.append(_breakdown(launched=launched, run=run))
        launched, run = _poc(out=root / f"startup-no-loss-{i}", data_root=data_root, extra=("--no-track-loss",))
        unmonitored.append(_breakdown(launched=launched, run=run))
    print("[bench] start-up: the loss monitor on CrypTen's operators", file=sys.stderr, flush=True)
    launched, run = _poc(out=root / "startup-crypten", data_root=data_root, extra=("--engine", "crypten"))
    return {"petlab": runs, "unmonitored": unmonitored, "crypten": _breakdown(launched=launched, run=run)}


def render_startup(*, measured: dict, command: str, machine: str, stamp: str) -> str:
    """The ``startup`` section for :func:`measure_startup`'s result."""
    runs = measured["petlab"]
    med = statistics.median
    lines = [f"## Start-up and loss monitoring (the default run)", "",
             f"Measured by `{command}` on {stamp}, on: {machine}.", "",
             f"`petlab poc` with its defaults (10,000 customers per side, TTP, logistic regression,",
             f"10 epochs), {len(runs)} times, each as its own command after one unmeasured run that",
             "made the tables. Seconds from the command's launch to the gateway's first training",
             "step, by phase (median of the runs; each phase ends where the next begins). The",
             "roles are forked from one interpreter that imported torch and CrypTen once",
             "(`petlab/mpc/zygote.py`): **spawn** is that interpreter's start and imports.", "",
             "| phase | ends when | seconds |", "|---|---|---|"]
    for i, row in enumerate(runs[0]["rows"]):
        lines.append(f"| {row['phase']} | {row['what']} | {med(r['rows'][i]['seconds'] for r in runs):.2f} |")
    totals = sorted(r["total"] for r in runs)
    without = sorted(r["total"] - r["psi"] for r in runs)
    lines += [f"| **launch to first training step** | | **{med(totals):.2f}** ({totals[0]:.2f} to {totals[-1]:.2f}) |",
              f"| the same without the PSI phase | | {med(without):.2f} ({without[0]:.2f} to {without[-1]:.2f}) |",
              "", f"Loss monitoring: the per-epoch training loss on the {MONITOR_ROWS:,} monitored rows, revealed",
              "to the gateway (one value per epoch), against the training itself (gateway's phases).",
              "On petlab's protocol the loss is computed on shares (softplus pieces; only the sum is",
              "opened, to the gateway), its randomness made by the dealer during each epoch's",
              "training; on CrypTen's operators with CrypTen's `log`. Because the dealer's work for",
              "the monitor lands in the training phase, the monitor's whole cost is the last line:",
              "training and monitor together, against the same runs with `--no-track-loss`.", "",
              "| engine | epochs | training s | loss monitor s | loss / training |", "|---|---|---|---|---|"]
    unmonitored = measured.get("unmonitored", [])
    rows = ([("petlab (default)", r) for r in runs] + [("petlab, `--no-track-loss`", r) for r in unmonitored]
            + [("crypten", measured["crypten"])])
    for name, r in rows:
        lines.append(f"| {name} | {r['epochs']} | {r['train']:.2f} | {r['loss']:.2f} | {r['loss'] / r['train']:.0%} |")
    if unmonitored:
        with_monitor = med(r["train"] + r["loss"] for r in runs)
        without = med(r["train"] for r in unmonitored)
        lines += ["", f"The monitor's whole cost on petlab's protocol (medians): training and monitor "
                      f"{with_monitor:.2f} s, training alone {without:.2f} s: **{with_monitor - without:+.2f} s, "
                      f"{(with_monitor - without) / without:.0%} of training**."]
    lines += ["", "Run folders (not committed): " + ", ".join(f"`{Path(r['run']).name}`" for _, r in rows)]
    return "\n".join(lines)
