"""When each phase of a process's life ended, on the wall clock (seconds since the
process started, the interpreter's own start-up included).

Each party writes its marks to ``result.json`` (``timeline``); the launcher writes when
it spawned the parties, so a reader can line every role up on one clock and see where
the seconds from launch to the first training step go (:func:`startup_breakdown`).

>>> t = Timeline()
>>> t.mark("ready")
>>> sorted(t.record()), list(t.record()["marks"])
(['marks', 'process_started_at'], ['ready'])
"""

from __future__ import annotations

import os
import time

__all__ = ["Timeline", "process_started_at", "startup_breakdown", "STARTUP_MARKS"]

#: A data party's marks up to its first training step, in order, with what ends at each.
STARTUP_MARKS = (
    ("imports", "interpreter and petlab's imports (torch, numpy)"),
    ("crypten_imported", "CrypTen imported, petlab's fixes applied"),
    ("table_checked", "own table read and checked"),
    ("greeted", "greeting: the peer met over TLS, configurations compared, key agreed"),
    ("aligned", "private set intersection"),
    ("features_ready", "own features prepared on the shared customers"),
    ("crypten_ready", "CrypTen initialised (gloo with the peer and the dealer, keys agreed)"),
    ("handshake", "public metadata exchanged and checked"),
    ("inputs_shared", "features and labels secret-shared"),
    ("training_started", "feature mask opened; the first training step starts"),
)


def process_started_at() -> float:
    """This process's start on the wall clock (``time.time()`` scale), from the kernel's
    record of it (Linux: 10 ms resolution); elsewhere, now."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(age, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


class Timeline:
    """Named marks, in seconds since this process started."""

    def __init__(self):
        self.started_at = process_started_at()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        """Record that the phase ``name`` ends now (a repeated name keeps its first mark)."""
        self.marks.setdefault(name, round(time.time() - self.started_at, 4))

    def record(self) -> dict:
        return {"process_started_at": self.started_at, "marks": dict(self.marks)}


def startup_breakdown(*, records: dict, launched_at: float, role: str = "gateway") -> list[dict]:
    """Seconds of each start-up phase of ``role`` (:data:`STARTUP_MARKS`), from the
    launcher's spawn (``launched_at``, wall clock) to its first training step.

    Args:
        records: role -> ``result.json`` contents (each with its ``timeline``).
        launched_at: when the launcher started the first party process.
        role: whose phases to list.

    Returns:
        One row per phase: ``phase``, ``what``, ``seconds`` (its own length) and
        ``at`` (seconds since the launch when it ended).

    >>> rec = {"gateway": {"timeline": {"process_started_at": 10.0,
    ...        "marks": {"imports": 1.0, "training_started": 3.5}}}}
    >>> [(r["phase"], r["seconds"], r["at"]) for r in startup_breakdown(records=rec, launched_at=9.5)]
    [('spawn', 0.5, 0.5), ('imports', 1.0, 1.5), ('training_started', 2.5, 4.0)]
    """
    timeline = records[role]["timeline"]
    start = timeline["process_started_at"]
    rows = [{"phase": "spawn", "what": "the launcher starts the party's interpreter",
             "seconds": start - launched_at, "at": start - launched_at}]
    previous = start
    for name, what in STARTUP_MARKS:
        if name not in timeline["marks"]:
            continue
        at = start + timeline["marks"][name]
        rows.append({"phase": name, "what": what, "seconds": at - previous, "at": at - launched_at})
        previous = at
    return rows
