"""Start every role of a local run from one clean interpreter that has imported what a
party needs (torch, CrypTen with petlab's fixes, petlab's party code) and nothing else.

``python -m petlab.mpc.zygote`` imports once, then waits for one line on stdin, a JSON
object ``{"job": JOB, "logs": {ROLE: LOG, ...}}`` (the launcher makes the job meanwhile,
or the command line makes the run's tables and folder), then forks one process per role; each child points its stdout and stderr at its own log and runs
``petlab party --role ROLE --job JOB`` (:func:`petlab.cli.main`), exactly as a fresh
interpreter would: it reads its own table and agrees its own keys after the fork. The
interpreter that forks holds no table, key or secret (it only imported modules; every
secret a party draws comes from the operating system after the fork, see
:mod:`petlab.mpc.secret_random`), so forking hands a role nothing of another's.

Importing torch and CrypTen costs a few CPU-seconds per interpreter; three roles starting
at once on two cores paid it three times over, one after the other. Here it is paid
once, while the launcher still works.

It reports on stdout, one line each, ``started ROLE PID`` and ``exited ROLE CODE`` (the
exit status, or minus the signal that ended it, as :class:`subprocess.Popen` does), and
ends when every role has. A SIGTERM is passed on to the roles still running.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["main", "PRELOAD"]

#: What every role imports before it does anything of its own (not scikit-learn, about a
#: second: only the label holder needs it, for its metrics, after training), and pyarrow's
#: kernels for the PSI's ids (:func:`petlab.data.psi.warm_up`). SecretFlow's PSI library
#: is not loaded here: each data role runs it in its own fresh interpreter
#: (:func:`petlab.data.psi.start_library`).
PRELOAD = ("petlab.cli", "petlab.mpc.party", "petlab.mpc.lean", "petlab.mpc.channel", "petlab.mpc.dealer",
           "petlab.data.psi", "petlab.data.validation", "petlab.data.features", "petlab.audit.transcript")


def _preload() -> None:
    import importlib

    from petlab.crypten_compat import import_crypten

    import_crypten()
    for name in PRELOAD:
        importlib.import_module(name)
    from petlab.data.psi import warm_up

    warm_up()  # pyarrow's kernels for the PSI's ids; SecretFlow's library each role runs in its own interpreter


def _fresh_public_generators() -> None:
    """numpy's and torch's global generators, reseeded from the operating system in each
    forked role: a fork copies their state, so two roles would otherwise draw the same
    values from them. They serve public randomness only (every secret comes from
    :mod:`petlab.mpc.secret_random`, and the run's public draws are seeded by its
    ``seed``); this keeps the roles as independent as fresh interpreters are."""
    import numpy as np
    import torch

    np.random.seed()
    torch.seed()


def _refuse_psi_library_loaded() -> None:
    """Refuse to fork where SecretFlow's library was loaded: whatever it sets up when it
    loads would be the same in every role (each role runs it in its own interpreter)."""
    loaded = sorted(m for m in sys.modules if m == "spu" or m.startswith("spu."))
    if loaded:
        raise RuntimeError(f"the zygote imported SecretFlow's library before forking the roles: {', '.join(loaded)}")


def _child(role: str, job: str, log: str) -> None:
    """In the forked process: the role's own log, then the role (never returns)."""
    code = 1
    try:
        _fresh_public_generators()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from petlab.cli import main as cli_main

        code = cli_main(["party", "--role", role, "--job", job])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the role's log, the exit status says it failed
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - nothing left to report to
                pass
        os._exit(code)


def main() -> int:
    import json

    _preload()
    _refuse_psi_library_loaded()
    line = sys.stdin.readline()
    if not line.strip():  # closed without a job: nothing to start
        return 0
    order = json.loads(line)
    job, roles = order["job"], list(order["logs"].items())
    children: dict[int, str] = {}

    def pass_on(signum, frame):
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, pass_on)
    sys.stdout.flush()
    for role, log in roles:
        pid = os.fork()
        if pid == 0:
            _child(role, job, log)
        children[pid] = role
        print(f"started {role} {pid}", flush=True)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        role = children.pop(pid, None)
        if role is not None:
            code = os.waitstatus_to_exitcode(status)
            print(f"exited {role} {code}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
