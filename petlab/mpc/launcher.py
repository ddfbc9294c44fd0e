"""Start every role of an MPC run as its own OS process on this machine and wait.

Each process is a fresh Python interpreter (``python -m petlab party ...``), so
nothing built in this process reaches a party: a party loads its own table itself. A
party that fails stops the run: the others are terminated and the error names the
failing role with the end of its log.

The gateway and the wallet talk over TLS on petlab's own sockets here as between two
organisations (:mod:`petlab.mpc.tls`), with a throw-away key pair each, made for the run
in ``<out_dir>/tls/``; each party is given its own key and the other's certificate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from petlab.config import PocConfig
from petlab.net import free_port
from petlab.mpc.job import Job
from petlab.mpc.tls import throwaway_pair
from petlab.parties import DEALER, Party

__all__ = ["MPCRunError", "MPCRun", "run_mpc", "free_port"]  # free_port re-exported from petlab.net


class MPCRunError(RuntimeError):
    """A party process failed or the run timed out."""


@dataclasses.dataclass(frozen=True)
class MPCRun:
    """What the party processes wrote, as read back from their records."""

    out_dir: Path
    records: dict  # role -> result.json contents
    wall_seconds: float  # launch to last exit, process start-up included


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _cause(folder: Path) -> str:
    """``: <error>`` as the role wrote it in its ``status.json`` (the first line of a
    failure message then says why), or nothing."""
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return ""
    return f": {status['error']}" if status.get("status") == "failed" and status.get("error") else ""


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
    ports: list[int] = []
    while len(ports) < 4:  # gloo's rendezvous; the greeting and direct link; each party's end of the PSI link
        candidate = free_port(address)
        if candidate not in ports:
            ports.append(candidate)
    port, psi_port, gateway_psi_port, wallet_psi_port = ports
    tls = throwaway_pair(folder=out / "tls")
    job = Job(config=config, address=address, port=port, out_dir=str(out), tables=tables, psi_port=psi_port,
              tls=tls, gateway_psi_port=gateway_psi_port, wallet_address=address, wallet_psi_port=wallet_psi_port)
    job_path = job.save(out / "job.json")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # each party uses config.mpc.threads_per_party torch threads; stop BLAS from oversubscribing
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(config.mpc.threads_per_party)
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    t0 = time.perf_counter()
    bar = None
    try:
        for role in roles_for(config):
            (out / role).mkdir(exist_ok=True)
            logs[role] = out / role / "party.log"
            with open(logs[role], "w") as fh:
                procs[role] = subprocess.Popen(
                    [sys.executable, "-m", "petlab", "party", "--role", role, "--job", str(job_path)],
                    stdout=fh, stderr=subprocess.STDOUT, env=env,
                )
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.train.epochs, desc=f"MPC {config.train.model} ({config.mpc.provider})",
                       unit="step")
        progress_path = out / config.data.label_party / "progress.json"  # the label holder writes it
        deadline = t0 + config.mpc.timeout_s
        training_started = False
        while True:
            codes = {role: p.poll() for role, p in procs.items()}
            failed = [r for r, c in codes.items() if c not in (None, 0)]
            if failed:
                role = failed[0]
                raise MPCRunError(
                    f"{role} process exited with code {codes[role]}{_cause(out / role)}; its log ({logs[role]}) "
                    "ends:\n" + _tail(logs[role])
                )
            if all(c == 0 for c in codes.values()):
                break
            if time.perf_counter() > deadline:
                raise MPCRunError(f"MPC run exceeded timeout_s={config.mpc.timeout_s:g}; parties stopped")
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
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    records = {role: json.loads((out / role / "result.json").read_text()) for role in procs}
    return MPCRun(out_dir=out, records=records, wall_seconds=wall)
