"""The start-up timeline: each role's phases on one clock, and the benchmark section
that reads them (no party process here: records as the roles write them); and what the
interpreter the roles are forked from holds before the fork."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

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


def test_the_zygote_forks_with_no_psi_library_loaded_and_refuses_to_where_one_is():
    """Whatever SecretFlow's library sets up when it loads would be the same in every
    forked role: the zygote's imports leave it unloaded (no module, nothing mapped), and
    its check before the fork fails once it is loaded."""
    script = """
import json, sys
from petlab.mpc.zygote import _preload, _refuse_psi_library_loaded
_preload()
_refuse_psi_library_loaded()
maps = open("/proc/self/maps").read()
before = {"modules": sorted(m for m in sys.modules if m.split(".")[0] == "spu"),
          "mapped": "libpsi" in maps or "libspu" in maps}
from petlab.data.psi_library import load
load()  # a broken variant: the zygote loading the library itself
try:
    _refuse_psi_library_loaded()
    refused = None
except RuntimeError as err:
    refused = str(err)
print(json.dumps({**before, "refused": refused, "mapped_after": "libpsi" in open("/proc/self/maps").read()}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["modules"] == [] and got["mapped"] is False
    assert got["mapped_after"] is True  # the probe sees a loaded library
    assert got["refused"].startswith("the zygote imported SecretFlow's library before forking the roles: spu")


_FORKS = """
import json, os, sys
import numpy as np
import torch
from petlab.mpc.zygote import _fresh_public_generators

reseed = sys.argv[1] == "reseed"
np.random.seed(7); torch.manual_seed(7)  # the state every fork inherits
out = []
for _ in range(2):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: draw, report, leave at once
        try:
            if reseed:
                _fresh_public_generators()
            os.write(write, json.dumps([np.random.randint(0, 2**31, 4).tolist(),
                                        torch.randint(0, 2**31, (4,)).tolist()]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        out.append(json.loads(fh.read()))
    os.waitpid(pid, 0)
print(json.dumps(out))
"""


def _draws_in_two_forks(reseed: bool) -> list:
    """numpy's and torch's global draws in two forked children of one interpreter."""
    done = subprocess.run([sys.executable, "-c", _FORKS, "reseed" if reseed else "plain"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_each_forked_role_reseeds_the_public_generators():
    first, second = _draws_in_two_forks(reseed=True)
    assert first[0] != second[0] and first[1] != second[1]
    first, second = _draws_in_two_forks(reseed=False)  # what a fork leaves without it: the same draws
    assert first == second
