"""The start-up timeline: each role's phases on one clock, and the benchmark section
that reads them (no party process here: records as the roles write them)."""

from __future__ import annotations

import time

from petlab.bench_startup import render_startup
from petlab.mpc.timeline import STARTUP_MARKS, Timeline, process_started_at, startup_breakdown


def test_the_process_start_is_before_now_and_marks_count_from_it():
    started = process_started_at()
    assert 0 <= time.time() - started < 3600  # this process started within the hour, not in the future
    t = Timeline()
    t.mark("imports")
    t.mark("imports")  # a repeated mark keeps the first
    first = t.record()["marks"]["imports"]
    time.sleep(0.02)
    t.mark("imports")
    assert t.record()["marks"]["imports"] == first and first >= 0


def _record(started, marks):
    return {"timeline": {"process_started_at": started, "marks": marks}}


def test_breakdown_lines_the_phases_up_from_the_launch():
    marks = {name: 1.0 + i for i, (name, _) in enumerate(STARTUP_MARKS)}
    rows = startup_breakdown(records={"gateway": _record(100.0, marks)}, launched_at=98.0)
    assert [r["phase"] for r in rows] == ["spawn"] + [name for name, _ in STARTUP_MARKS]
    assert rows[0]["seconds"] == 2.0 and rows[1]["seconds"] == 1.0
    assert all(r["seconds"] == 1.0 for r in rows[2:])
    assert rows[-1]["at"] == 2.0 + marks["training_started"]
    assert abs(sum(r["seconds"] for r in rows) - rows[-1]["at"]) < 1e-9


def _measurement(total_shift, psi, train, loss):
    rows = [{"phase": "command", "what": "cli", "seconds": 1.0 + total_shift},
            {"phase": "aligned", "what": "psi", "seconds": psi},
            {"phase": "training_started", "what": "go", "seconds": 0.5}]
    return {"rows": rows, "total": sum(r["seconds"] for r in rows), "psi": psi, "train": train, "loss": loss,
            "epochs": 10, "run": f"/runs/startup-{total_shift}"}


def test_startup_section_shows_medians_and_the_loss_share():
    measured = {"petlab": [_measurement(0, 2.0, 1.0, 0.1), _measurement(1, 4.0, 2.0, 0.2),
                           _measurement(2, 3.0, 1.0, 0.15)],
                "unmonitored": [_measurement(0, 2.0, 1.0, 0.0), _measurement(0, 2.0, 0.9, 0.0),
                                _measurement(0, 2.0, 1.2, 0.0)],
                "crypten": _measurement(0, 2.0, 10.0, 5.0)}
    text = render_startup(measured=measured, command="petlab bench --sections startup", machine="m", stamp="now")
    assert "Measured by `petlab bench --sections startup` on now, on: m." in text
    assert "| command | cli | 2.00 |" in text  # median of 1, 2, 3
    assert "| aligned | psi | 3.00 |" in text
    assert "**launch to first training step** | | **6.50** (3.50 to 6.50)" in text
    assert "the same without the PSI phase | | 2.50 (1.50 to 3.50)" in text
    assert "| petlab (default) | 10 | 1.00 | 0.10 | 10% |" in text and "| crypten | 10 | 10.00 | 5.00 | 50% |" in text
    assert "| petlab, `--no-track-loss` | 10 | 0.90 | 0.00 | 0% |" in text
    # the whole cost: median of training + monitor (1.1, 2.2, 1.15) against median training alone (1.0, 0.9, 1.2)
    assert "training and monitor 1.15 s, training alone 1.00 s: **+0.15 s, 15% of training**" in text
