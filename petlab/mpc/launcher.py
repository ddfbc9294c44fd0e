"""Start every role of an MPC run as its own OS process on this machine and wait.

Each role is its own OS process, forked from one clean interpreter that has imported
petlab, torch and CrypTen and nothing else (:mod:`petlab.mpc.zygote`; where the OS cannot
fork, or with ``PETLAB_FORK=0`` in the environment, a fresh interpreter each: ``python -m
petlab party ...``), so nothing built in this process reaches a party: a party loads its
own table itself. A
party that fails stops the run: the others are terminated and the error is one line,
the failing role's own account of it (``status.json``), with the path of its log, where
the traceback is. Where several fail, the cause is the one that did not merely lose a
peer.

``launch.json`` keeps when the roles were launched (the wall clock every role's
``timeline`` is on, see :mod:`petlab.mpc.timeline`).

The gateway and the wallet talk over TLS on petlab's own sockets here as between two
organisations (:mod:`petlab.mpc.tls`), with a throw-away key pair each, made for the run
in ``<out_dir>/tls/``; each party is given its own key and the other's certificate.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from petlab.config import PocConfig
from petlab.net import free_port
from petlab.mpc.job import Job
from petlab.mpc.tls import throwaway_pair
from petlab.parties import DEALER, Party

__all__ = ["MPCRunError", "MPCRun", "run_mpc", "free_port", "RoleStarter", "starting_roles_ahead"]  # free_port re-exported from petlab.net


class MPCRunError(RuntimeError):
    """A party process failed or the run timed out: one line (``str``), naming the role
    and the cause; ``log`` is the path of that role's log."""

    def __init__(self, message: str, *, role: str | None = None, log: Path | None = None):
        super().__init__(message)
        self.role, self.log = role, log


@dataclasses.dataclass(frozen=True)
class MPCRun:
    """What the party processes wrote, as read back from their records."""

    out_dir: Path
    records: dict  # role -> result.json contents
    wall_seconds: float  # launch to last exit, process start-up included
    launched_at: float = 0.0  # wall clock (time.time()) when the first party process was started
    tls_seconds: float = 0.0  # making the run's throw-away TLS key pairs, before the launch


#: Errors a role reports when another role went away first: never the cause of a failed run
#: while another role failed on its own.
SECONDARY_ERRORS = ("PeerLostError", "PeerLinkError")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1].strip() if lines else "(nothing in its log)"


def _failure(role: str, code: int, folder: Path) -> tuple[int, float, str]:
    """``(rank, when, message)`` for a role that exited with ``code``: its own one-line
    account from ``status.json``, or how the process ended. The failure with the lowest
    ``(rank, when)`` is the run's cause: a process that died without a word (killed: the
    others only saw it go) before one that reported its own error, before one that only
    lost a peer."""
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        status = {}
    if status.get("status") == "failed" and status.get("error"):
        message = status.get("message") or status["error"]
        rank = 2 if status["error"].split(":", 1)[0] in SECONDARY_ERRORS else 1
        return rank, float(status.get("failed_at") or time.time()), message
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return 0, time.time(), f"the process was killed ({name}) before it reported an error"
    return 0, time.time(), f"the process exited with code {code} before it reported an error"


def _role_env(threads_per_party: int) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # each party uses config.mpc.threads_per_party torch threads; stop BLAS from oversubscribing
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads_per_party)
    return env


def _forking() -> bool:
    return hasattr(os, "fork") and os.environ.get("PETLAB_FORK", "1") != "0"


#: After a role fails, how long the others may take to end on their own account (each
#: writes its own cause) before they are stopped.
ACCOUNTS_S = 2.0


class RoleStarter:
    """A clean interpreter that imports what the roles need (:mod:`petlab.mpc.zygote`),
    started ahead of a run so that its imports overlap the caller's own work (the command
    line's imports, the tables, the run folder); :func:`run_mpc` forks the run's roles
    from it. Use it as a context manager: :func:`starting_roles_ahead`.
    """

    def __init__(self, *, threads_per_party: int):
        self.threads_per_party = threads_per_party
        self.env = _role_env(threads_per_party)
        self.used = False
        self.zygote = subprocess.Popen([sys.executable, "-m", "petlab.mpc.zygote"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, text=True)

    def close(self) -> None:
        """Stop it if no run used it (it has started no role and holds nothing: it is
        ended at once, not left to finish its imports)."""
        if not self.used:
            if self.zygote.poll() is None:
                self.zygote.kill()
                self.zygote.wait()
            for stream in (self.zygote.stdin, self.zygote.stdout, self.zygote.stderr):
                stream.close()


_AHEAD: contextvars.ContextVar = contextvars.ContextVar("petlab_role_starter", default=None)


@contextlib.contextmanager
def starting_roles_ahead(*, threads_per_party: int):
    """Within the block, the next :func:`run_mpc` forks its roles from an interpreter
    started now (:class:`RoleStarter`), which imports while the block does its own work.

    Args:
        threads_per_party: the torch threads of each role, set in that interpreter's
            environment at its start; a run configured otherwise starts its own.
    """
    if not _forking():
        yield None
        return
    starter = RoleStarter(threads_per_party=threads_per_party)
    token = _AHEAD.set(starter)
    try:
        yield starter
    finally:
        _AHEAD.reset(token)
        starter.close()


class _Roles:
    """The role processes of one run, however they were started: ``poll()`` gives each
    role's exit status (None while it runs), ``stop()`` ends the ones still running."""

    def __init__(self, *, roles: list[str], job_path: Path, logs: dict[str, Path], env: dict, launch_log: Path,
                 threads_per_party: int):
        self.roles, self.codes, self.pids = list(roles), {}, {}
        self.job_path, self.logs, self.launch_log = job_path, logs, launch_log
        for role in roles:
            logs[role].write_text("")  # each role's log starts empty
        self.forked = _forking()
        if self.forked:
            ahead = _AHEAD.get()
            if ahead is not None and not ahead.used and ahead.threads_per_party == threads_per_party \
                    and ahead.zygote.poll() is None:
                ahead.used = True
                self.zygote = ahead.zygote
            else:
                self.zygote = subprocess.Popen([sys.executable, "-m", "petlab.mpc.zygote"], stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()
            self.errors = threading.Thread(target=self._copy_errors, daemon=True)
            self.errors.start()
        else:
            self.procs = {}
            self.env = env

    def _copy_errors(self) -> None:
        with open(self.launch_log, "w") as fh:
            for line in self.zygote.stderr:
                fh.write(line)
                fh.flush()

    def go(self) -> None:
        """Start the roles (the job file is written)."""
        if not self.forked:
            for role in self.roles:
                with open(self.logs[role], "a") as fh:
                    self.procs[role] = subprocess.Popen(
                        [sys.executable, "-m", "petlab", "party", "--role", role, "--job", str(self.job_path)],
                        stdout=fh, stderr=subprocess.STDOUT, env=self.env)
                self.pids[role] = self.procs[role].pid
            return
        order = {"job": str(self.job_path), "logs": {role: str(self.logs[role]) for role in self.roles}}
        try:
            self.zygote.stdin.write(json.dumps(order) + "\n")
            self.zygote.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it ended already: poll() says how

    def _read(self) -> None:
        for line in self.zygote.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "started":
                self.pids[parts[1]] = int(parts[2])
            elif len(parts) == 3 and parts[0] == "exited":
                self.codes[parts[1]] = int(parts[2])

    def poll(self) -> dict[str, int | None]:
        if not self.forked:
            return {role: p.poll() for role, p in self.procs.items()}
        if self.zygote.poll() is not None:
            self.reader.join(timeout=5)
            # a role the zygote never started or never reported: it failed as the zygote did
            return {role: self.codes.get(role, self.zygote.returncode or 1) for role in self.roles}
        return {role: self.codes.get(role) for role in self.roles}

    def started(self) -> bool:
        """Whether every role's process exists (False: the start itself failed)."""
        return all(role in self.pids for role in self.roles)

    def stop(self, *, grace_s: float = 10.0) -> None:
        running = [role for role, code in self.poll().items() if code is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for role in running:
                if role in self.pids:
                    try:
                        os.kill(self.pids[role], sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(self.poll()[r] is None for r in running):
                time.sleep(0.05)
            running = [role for role in running if self.poll()[role] is None]
            if not running:
                break
        if self.forked:
            if self.zygote.poll() is None:
                self.zygote.terminate()
            try:
                self.zygote.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.zygote.kill()
                self.zygote.wait()
            self.reader.join(timeout=5)
            self.errors.join(timeout=5)


def roles_for(config: PocConfig) -> list[str]:
    roles = [str(p) for p in Party]
    if config.mpc.provider == "TTP":
        roles.append(DEALER)
    return roles


def run_mpc(
    *,
    config: PocConfig,
    tables: dict,
    out_dir: str | os.PathLike,
    progress: bool = True,
    address: str = "127.0.0.1",
) -> MPCRun:
    """Run the parties (and the dealer under TTP) locally and collect their records.

    Args:
        config: the validated run configuration.
        tables: party name -> {"path", "id_column", "label_column"}.
        out_dir: folder for the job file and each role's record and log.
        progress: show a progress bar over epochs (tqdm).
        address: loopback address to rendezvous on.

    The gateway and the wallet authenticate each other with throw-away certificates
    made in ``out_dir/tls/`` (the dealer speaks only torch.distributed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = _role_env(config.mpc.threads_per_party)
    logs: dict[str, Path] = {}
    for role in roles_for(config):
        (out / role).mkdir(exist_ok=True)
        logs[role] = out / role / "party.log"
    t0, launched_at = time.perf_counter(), time.time()
    # the roles' interpreter starts importing now, while the ports, keys and job are made
    procs = _Roles(roles=roles_for(config), job_path=out / "job.json", logs=logs, env=env,
                   launch_log=out / "launch.log", threads_per_party=config.mpc.threads_per_party)
    bar = None
    try:
        ports: list[int] = []
        while len(ports) < 4:  # gloo's rendezvous; the greeting and direct link; each party's end of the PSI link
            candidate = free_port(address)
            if candidate not in ports:
                ports.append(candidate)
        port, psi_port, gateway_psi_port, wallet_psi_port = ports
        t_tls = time.perf_counter()
        tls = throwaway_pair(folder=out / "tls")
        tls_seconds = time.perf_counter() - t_tls
        job = Job(config=config, address=address, port=port, out_dir=str(out), tables=tables, psi_port=psi_port,
                  tls=tls, gateway_psi_port=gateway_psi_port, wallet_address=address, wallet_psi_port=wallet_psi_port)
        job.save(out / "job.json")
        (out / "launch.json").write_text(json.dumps({"launched_at": launched_at, "tls_seconds": tls_seconds}))
        procs.go()
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.train.epochs, desc=f"MPC {config.train.model} ({config.mpc.provider})",
                       unit="step")
        progress_path = out / config.data.label_party / "progress.json"  # the label holder writes it
        deadline = t0 + config.mpc.timeout_s
        training_started = False
        while True:
            codes = procs.poll()
            failed = [r for r, c in codes.items() if c not in (None, 0)]
            if failed and not procs.started():
                raise MPCRunError(f"the party processes could not start: {_last_line(out / 'launch.log')}",
                                  log=out / "launch.log")
            if failed:  # the others' accounts, if they fail at once too (a lost peer, the same bad input)
                settle = time.monotonic() + ACCOUNTS_S
                while time.monotonic() < settle and any(c is None for c in procs.poll().values()):
                    time.sleep(0.05)
                codes = procs.poll()
                failures = {r: _failure(r, c, out / r) for r, c in codes.items() if c not in (None, 0)}
                role = min(failures, key=lambda r: failures[r][:2])
                raise MPCRunError(f"{role}: {failures[role][2]}", role=role, log=logs[role])
            if all(c == 0 for c in codes.values()):
                break
            if time.perf_counter() > deadline:
                holder = config.data.label_party
                raise MPCRunError(f"the run exceeded timeout_s={config.mpc.timeout_s:g}; parties stopped",
                                  role=holder, log=logs.get(holder))
            if bar is not None and progress_path.exists():
                try:
                    state = json.loads(progress_path.read_text())
                    if not training_started:  # time the bar (and its ETA) from the first step
                        bar.reset(total=state["steps"])
                        training_started = True
                    bar.set_postfix_str(f"epoch {state['epoch']}/{state['epochs']}", refresh=False)
                    bar.update(state["step"] - bar.n)
                except (ValueError, KeyError, OSError):
                    pass  # written atomically, but tolerate a race at start-up
            time.sleep(0.2)
        if bar is not None and bar.total:
            bar.update(bar.total - bar.n)
    finally:
        procs.stop()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    records = {role: json.loads((out / role / "result.json").read_text()) for role in roles_for(config)}
    return MPCRun(out_dir=out, records=records, wall_seconds=wall, launched_at=launched_at, tls_seconds=tls_seconds)
